//! `prewarm-yield`: does prewarm yield the volume to the services it warms
//! for? A latency-bound reader (fio, random 4 KiB reads at queue depth 1,
//! each on a cold chunk) is measured alone on the lazy-volume testbed, then
//! beside a prewarm `--device` sweep without a limit (at each queue depth
//! given), then beside the sweep with `--max-rate` (each rate given, at the
//! first depth). The reader's p50/p99 latency
//! each way, and the sweep's own throughput, go to a markdown table (needs
//! root: FUSE and a loop device).
//!
//! The sweep reads the device in physical order from the start; the reader
//! reads the last quarter, which the sweep does not reach while the reader
//! runs, so every read it makes is a cold fetch competing with the sweep's
//! for the testbed's fetch slots, as a service's reads compete with a
//! background hydration on EBS. A queue deeper than the volume's fetch
//! slots adds no throughput, only a wait for every other reader: the depths
//! show by how much (the initrd run, which has no rate limit, keeps 32
//! reads queued beside udev's and the root mount's).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use prewarm_benches::e2e::sys::{
    first_missing, prewarm_and_testbed, run_ok, LoopDevice, TestbedProcess,
};

#[derive(Parser, Debug)]
#[command(about = "Latency of a random reader beside a prewarm sweep, with and without --max-rate")]
struct Cli {
    /// prewarm binary [default: `prewarm` next to this binary].
    #[arg(long)]
    prewarm: Option<PathBuf>,
    /// Work directory (created; the image is a sparse file in it).
    #[arg(long, default_value = "/var/tmp/prewarm-yield")]
    work: PathBuf,
    /// Device size in GiB.
    #[arg(long, default_value_t = 16)]
    size_gib: u64,
    /// Testbed fetch latency, ms.
    #[arg(long, default_value_t = 4.0)]
    latency_ms: f64,
    /// Testbed fetches in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// `--max-rate` values to try, MiB/s (at the first queue depth).
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    rates: Vec<u32>,
    /// Queue depths of the unlimited sweep.
    #[arg(long, value_delimiter = ',', default_value = "32,8")]
    depths: Vec<u32>,
    /// How long the reader reads in each measurement, seconds.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Rounds (each measures every scenario once; medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// A prewarm `--device` sweep beside the reader.
#[derive(Debug, Clone, Copy)]
struct Sweep {
    queue_depth: u32,
    /// `--max-rate`, MiB/s (None: no limit).
    max_rate: Option<u32>,
}

/// One measurement of the reader (and of the sweep beside it, if any).
#[derive(Debug, Clone, Copy)]
struct Sample {
    p50_ms: f64,
    p99_ms: f64,
    reads: u64,
    /// The sweep's MiB/s while the reader ran (None: reader alone).
    sweep_mibps: Option<f64>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(missing) = first_missing(true, &["fio", "losetup"]) {
        bail!("needs root and {missing}");
    }
    let (prewarm, testbed) = prewarm_and_testbed(cli.prewarm.as_deref())?;
    std::fs::create_dir_all(&cli.work)?;
    let image = cli.work.join("image");
    let f = std::fs::File::create(&image)?;
    f.set_len(cli.size_gib << 30)?;
    let args: Vec<String> = [
        "--latency-ms".to_string(),
        cli.latency_ms.to_string(),
        "--concurrency".into(),
        cli.concurrency.to_string(),
    ]
    .into();
    let tb = TestbedProcess::start(
        &testbed,
        &image,
        &cli.work.join("mnt"),
        &args,
        &cli.work.join("testbed.log"),
    )?;
    let lo = LoopDevice::attach(&tb.disk(), true)?;
    let commit = run_ok(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());

    // The reader alone (None), then beside each sweep.
    let Some(&first_depth) = cli.depths.first() else {
        bail!("--depths names no queue depth");
    };
    let mut scenarios: Vec<Option<Sweep>> = vec![None];
    scenarios.extend(cli.depths.iter().map(|&queue_depth| {
        Some(Sweep {
            queue_depth,
            max_rate: None,
        })
    }));
    scenarios.extend(cli.rates.iter().map(|&r| {
        Some(Sweep {
            queue_depth: first_depth,
            max_rate: Some(r),
        })
    }));
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len()];
    for round in 0..cli.rounds {
        for (i, sc) in scenarios.iter().enumerate() {
            tb.reset()?;
            tb.wait_idle(Duration::from_secs(5))?;
            let s = measure(&cli, &prewarm, &lo.path, *sc)?;
            eprintln!("round {round} {}: {s:?}", label(*sc));
            samples[i].push(s);
        }
    }
    let alone_p99 = median(samples[0].iter().map(|s| s.p99_ms));
    // The command as run, so that the table can be made again.
    let given: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "# Yielding to the boot: a latency-bound reader beside a sweep\n\n\
         Generated by `prewarm-yield` (`cargo build --release -p prewarm-cli -p \
         prewarm-benches && target/release/prewarm-yield{}{} > benches/YIELD.md`, as root).\n",
        if given.is_empty() { "" } else { " " },
        given.join(" ")
    );
    println!(
        "Measured at commit {commit}: testbed {} ms fetches, {} in flight, {} GiB device; \
         reader `fio --rw=randread --bs=4k --blockalign=512k --iodepth=1` over the last \
         quarter for {} s; sweep `prewarm --device` from the start, at queue depth {first_depth} \
         unless the scenario says otherwise; medians of {} rounds (each value in brackets).\n",
        cli.latency_ms, cli.concurrency, cli.size_gib, cli.seconds, cli.rounds
    );
    println!("| scenario | reader p50 ms | reader p99 ms | p99 / alone | reader reads | sweep MiB/s | p99 within 1.5× |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (sc, ss) in scenarios.iter().zip(&samples) {
        let p50 = median(ss.iter().map(|s| s.p50_ms));
        let p99 = median(ss.iter().map(|s| s.p99_ms));
        let all99: Vec<String> = ss.iter().map(|s| format!("{:.1}", s.p99_ms)).collect();
        let reads = median(ss.iter().map(|s| s.reads as f64));
        let sweep = ss.iter().filter_map(|s| s.sweep_mibps).collect::<Vec<_>>();
        let sweep = if sweep.is_empty() {
            "–".to_string()
        } else {
            format!("{:.0}", median(sweep.into_iter()))
        };
        let ratio = p99 / alone_p99;
        let within = ss.iter().filter(|s| s.p99_ms <= 1.5 * alone_p99).count();
        println!(
            "| {} | {p50:.2} | {p99:.2} [{}] | {ratio:.2} | {reads:.0} | {sweep} | {} ({within}/{} rounds) |",
            label(*sc),
            all99.join(", "),
            if ratio <= 1.5 { "yes" } else { "no" },
            ss.len()
        );
    }
    Ok(())
}

fn label(sc: Option<Sweep>) -> String {
    match sc {
        None => "reader alone".into(),
        Some(Sweep {
            queue_depth,
            max_rate: None,
        }) => format!("beside a sweep, no limit, queue depth {queue_depth}"),
        Some(Sweep {
            max_rate: Some(r), ..
        }) => format!("beside a sweep, --max-rate {r}"),
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Run the reader for `cli.seconds`, beside a sweep if `sweep` says so.
fn measure(cli: &Cli, prewarm: &Path, dev: &Path, sweep: Option<Sweep>) -> Result<Sample> {
    let mut sweeper: Option<Child> = match sweep {
        None => None,
        Some(sweep) => {
            let mut c = Command::new(prewarm);
            c.args([
                "--json",
                "--queue-depth",
                &sweep.queue_depth.to_string(),
                "--device",
            ])
            .arg(dev);
            if let Some(r) = sweep.max_rate {
                c.args(["--max-rate", &r.to_string()]);
            }
            let child = c
                .env("RUST_LOG", "error")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the sweep")?;
            // Let it fill its queue first.
            std::thread::sleep(Duration::from_millis(300));
            Some(child)
        }
    };
    let size = cli.size_gib << 30;
    let fio = Command::new("fio")
        .args([
            "--name=reader",
            "--direct=1",
            "--rw=randread",
            "--bs=4k",
            "--blockalign=512k",
            "--iodepth=1",
            "--ioengine=psync",
            "--randrepeat=0",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", dev.display()))
        .arg(format!("--offset={}", size / 4 * 3))
        .arg(format!("--size={}", size / 4))
        .arg(format!("--runtime={}", cli.seconds))
        .output()
        .context("running fio")?;
    let sweep_mibps = match sweeper.take() {
        None => None,
        Some(child) => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            let out = child.wait_with_output()?;
            let r: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("the sweep's JSON report")?;
            let bytes = r["bytes_read"].as_f64().unwrap_or(0.0);
            let ms = r["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
            Some(bytes / f64::from(1u32 << 20) / (ms / 1e3))
        }
    };
    if !fio.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&fio.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&fio.stdout).context("fio's JSON")?;
    let read = &v["jobs"][0]["read"];
    let pct = |p: &str| {
        read["clat_ns"]["percentile"][p]
            .as_f64()
            .unwrap_or(f64::NAN)
            / 1e6
    };
    Ok(Sample {
        p50_ms: pct("50.000000"),
        p99_ms: pct("99.000000"),
        reads: read["total_ios"].as_u64().unwrap_or(0),
        sweep_mibps,
    })
}
