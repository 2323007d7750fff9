//! What `prewarm record` costs: a workload reads 10,000 files on a
//! loop-mounted ext4 filesystem, with and without the recorder watching
//! it, and this prints the workload's slowdown and the recorder's events
//! per second, CPU time and peak RSS (from its `--json` summary).
//!
//! Each run remounts the filesystem first, so every run reads the files
//! cold from the loop device; runs alternate without and with the
//! recorder, and medians are reported. Needs root (loop device, mount,
//! fanotify). Takes `/tmp/prewarm-bench.lock` itself.
//!
//! Usage: `prewarm-record-cost [--prewarm target/release/prewarm]
//! [--files 10000] [--runs 5]`

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Read each of `files` once, whole, in order; the wall time.
fn workload(files: &[PathBuf]) -> Result<Duration> {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    for f in files {
        let mut file = File::open(f)?;
        while file.read(&mut buf)? > 0 {}
    }
    Ok(start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut prewarm = PathBuf::from("target/release/prewarm");
    let mut nfiles = 10_000usize;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().context("an option without its value")?;
        match a.as_str() {
            "--prewarm" => prewarm = v.into(),
            "--files" => nfiles = v.parse()?,
            "--runs" => runs = v.parse()?,
            _ => bail!("unknown option {a}"),
        }
    }
    let lock = File::create("/tmp/prewarm-bench.lock")?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking /tmp/prewarm-bench.lock")?;

    let tmp = PathBuf::from(format!("/tmp/prewarm-record-cost.{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    let image = tmp.join("fs.img");
    File::create(&image)?.set_len(1 << 30)?;
    sh(
        "mkfs.ext4",
        &["-q", "-F", image.to_str().unwrap_or_default()],
    )?;
    let lo = sh(
        "losetup",
        &["-f", "--show", image.to_str().unwrap_or_default()],
    )?
    .trim()
    .to_string();
    let mnt = tmp.join("mnt");
    fs::create_dir_all(&mnt)?;
    let m = mnt.to_str().unwrap_or_default().to_string();
    let result = (|| -> Result<()> {
        sh("mount", &[&lo, &m])?;
        // 10,000 files of 4 to 64 KiB in 100 directories.
        let mut files = Vec::with_capacity(nfiles);
        for i in 0..nfiles {
            let dir = mnt.join(format!("d{:03}", i % 100));
            fs::create_dir_all(&dir)?;
            let path = dir.join(format!("f{i:05}"));
            fs::write(&path, vec![i as u8; 4096 * (1 + i % 16)])?;
            files.push(path);
        }
        sh("umount", &[&m])?;
        let (mut base, mut with, mut eps, mut cpu, mut rss, mut recorded, mut looks) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for run in 0..runs {
            // Without the recorder.
            sh("mount", &[&lo, &m])?;
            base.push(workload(&files)?.as_secs_f64() * 1e3);
            sh("umount", &[&m])?;
            // With it.
            sh("mount", &[&lo, &m])?;
            let out = tmp.join(format!("run{run}.rec"));
            let mut child = Command::new(&prewarm)
                .args(["record", "--json", "-o"])
                .arg(&out)
                .arg(&mnt)
                .env("RUST_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("running {}", prewarm.display()))?;
            let mut err = BufReader::new(child.stderr.take().context("stderr")?);
            let mut line = String::new();
            while !line.contains("watching the filesystems") {
                line.clear();
                if err.read_line(&mut line)? == 0 {
                    bail!("prewarm record ended before watching");
                }
            }
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
            let took = workload(&files)?;
            with.push(took.as_secs_f64() * 1e3);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            let output = child.wait_with_output()?;
            let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
                .with_context(|| String::from_utf8_lossy(&output.stdout).into_owned())?;
            let events = summary["events"].as_f64().unwrap_or(0.0);
            eps.push(events / took.as_secs_f64());
            cpu.push(summary["cpu_ms"].as_f64().unwrap_or(0.0));
            rss.push(summary["max_rss_kib"].as_f64().unwrap_or(0.0));
            recorded.push(summary["files_recorded"].as_f64().unwrap_or(0.0));
            looks.push(summary["looks"].as_f64().unwrap_or(0.0));
            sh("umount", &[&m])?;
            eprintln!(
                "run {run}: without {:.1} ms, with {:.1} ms, {events} events, {} files recorded",
                base[run], with[run], summary["files_recorded"]
            );
        }
        let (b, w) = (median(base), median(with));
        println!(
            "workload: {nfiles} files read cold on a loop-mounted ext4, medians of {runs} runs"
        );
        println!("| measure | value |\n|---|---:|");
        println!("| workload without the recorder, ms | {b:.1} |");
        println!("| workload with the recorder, ms | {w:.1} |");
        println!("| slowdown | {:.3}× |", w / b);
        println!(
            "| events handled per second of workload | {:.0} |",
            median(eps)
        );
        println!("| files recorded | {:.0} |", median(recorded));
        println!(
            "| recorder CPU time (user + system), ms | {:.1} |",
            median(cpu)
        );
        println!("| recorder peak RSS, KiB | {:.0} |", median(rss));
        println!(
            "| files looked at in the page cache while watching | {:.0} |",
            median(looks)
        );
        Ok(())
    })();
    let _ = Command::new("umount")
        .arg(&m)
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("losetup").args(["-d", &lo]).status();
    let _ = fs::remove_dir_all(&tmp);
    result
}
