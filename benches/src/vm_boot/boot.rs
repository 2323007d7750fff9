//! One VM boot's evidence, parsed from the files `benches/vm/run.sh` leaves
//! in its work directory: `layout.env` and `big.chunks` (what
//! `build-image.sh` recorded about the image) and, per boot, `boot-KIND-N/`
//! with `console.log` (ttyS0), `data.log` (ttyS1: the stand-in's readings,
//! the units' properties, the journal, the prewarm units' output),
//! `stats.json` (testbed counters) and `boot.env` (qemu exit status, wall
//! time).
//!
//! Parsing is apart from the checks so that both can be unit-tested on
//! recorded boots (`benches/vm/testdata/`) without root or qemu. Loading
//! panics on a missing or malformed required file: it is test support, and
//! a panic names the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::lazy::Stats;

/// `KEY=VALUE` lines (others ignored), trimmed.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// [`parse_env`] of a file; panics if it cannot be read.
pub fn read_env(path: &Path) -> BTreeMap<String, String> {
    parse_env(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
    )
}

/// What build-image.sh recorded about the image.
#[derive(Debug, Clone)]
pub struct Layout {
    pub env: BTreeMap<String, String>,
    /// The chunk holding the stand-in's marker file: its first read.
    pub marker_chunk: u64,
    /// The chunks of the stand-in's big file.
    pub big_chunks: BTreeSet<u64>,
}

impl Layout {
    pub fn load(work: &Path) -> Layout {
        let env = std::fs::read_to_string(work.join("layout.env"))
            .unwrap_or_else(|e| panic!("read {}: {e}", work.join("layout.env").display()));
        let chunks = std::fs::read_to_string(work.join("big.chunks")).expect("big.chunks");
        Layout::parse(&env, &chunks)
    }

    /// From the texts of `layout.env` and `big.chunks`.
    pub fn parse(layout_env: &str, big_chunks: &str) -> Layout {
        let env = parse_env(layout_env);
        let marker_chunk = env["MARKER_CHUNK"].parse().expect("MARKER_CHUNK");
        let big_chunks = big_chunks
            .split_whitespace()
            .map(|c| c.parse().expect("chunk index"))
            .collect();
        Layout {
            env,
            marker_chunk,
            big_chunks,
        }
    }
}

/// One boot's evidence.
#[derive(Debug, Clone)]
pub struct Boot {
    /// `KIND-N`, from the directory `boot-KIND-N`.
    pub name: String,
    /// "with", "without", or an experiment of run.sh ("rootonly", ...).
    pub kind: String,
    /// boot.env: `qemu_rc`, `wall_s`.
    pub env: BTreeMap<String, String>,
    /// ttyS0, without ANSI sequences and CRs.
    pub console: Vec<String>,
    /// ttyS1 sections ("=== NAME rest"): lines per section name.
    pub data: BTreeMap<String, Vec<String>>,
    /// The stand-in's /proc/uptime readings: start, marker read, done.
    pub standin: Option<(f64, f64, f64)>,
    /// systemd unit properties (the `units` section), per unit Id.
    pub units: BTreeMap<String, BTreeMap<String, String>>,
    pub stats: Option<Stats>,
}

impl Boot {
    /// Every `boot-*` directory of a work dir, in name order; there must be
    /// a `boot-with-1`.
    pub fn load_all(work: &Path) -> Vec<Boot> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(work)
            .expect("read work dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("boot-"))
            })
            .collect();
        dirs.sort();
        assert!(
            dirs.iter().any(|d| d.ends_with("boot-with-1")),
            "no boot-with-1 in {}",
            work.display()
        );
        dirs.iter().map(|d| Boot::load(d)).collect()
    }

    /// One `boot-KIND-N` directory (console.log, data.log and stats.json may
    /// be missing; boot.env may not).
    pub fn load(dir: &Path) -> Boot {
        let name = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("boot-")
            .to_string();
        let text = |f: &str| {
            String::from_utf8_lossy(&std::fs::read(dir.join(f)).unwrap_or_default()).into_owned()
        };
        let env = std::fs::read_to_string(dir.join("boot.env"))
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.join("boot.env").display()));
        let stats = std::fs::read_to_string(dir.join("stats.json")).ok();
        Boot::parse(
            &name,
            &text("console.log"),
            &text("data.log"),
            stats.as_deref(),
            &env,
        )
    }

    /// From the texts of a boot's files; `name` is `KIND-N`.
    pub fn parse(
        name: &str,
        console: &str,
        data_log: &str,
        stats: Option<&str>,
        boot_env: &str,
    ) -> Boot {
        let console: Vec<String> = clean(console).lines().map(str::to_string).collect();
        let mut data: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut standin = None;
        let mut section = String::new();
        for line in clean(data_log).lines() {
            if let Some(rest) = line.strip_prefix("=== ") {
                let (head, args) = rest.split_once(' ').unwrap_or((rest, ""));
                section = match head {
                    "output" => format!("output {args}"),
                    h => h.to_string(),
                };
                if head == "standin" {
                    let kv: BTreeMap<&str, f64> = args
                        .split_whitespace()
                        .filter_map(|w| w.split_once('='))
                        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                        .collect();
                    if let (Some(a), Some(b), Some(c)) =
                        (kv.get("start"), kv.get("marker"), kv.get("done"))
                    {
                        standin = Some((*a, *b, *c));
                    }
                }
                data.entry(section.clone()).or_default();
            } else if !section.is_empty() {
                data.get_mut(&section).unwrap().push(line.to_string());
            }
        }
        let mut units = BTreeMap::new();
        let mut cur: BTreeMap<String, String> = BTreeMap::new();
        for line in data
            .get("units")
            .cloned()
            .unwrap_or_default()
            .iter()
            .chain([&String::new()])
        {
            match line.split_once('=') {
                Some((k, v)) => {
                    cur.insert(k.to_string(), v.to_string());
                }
                None if !cur.is_empty() => {
                    let c = std::mem::take(&mut cur);
                    units.insert(c.get("Id").cloned().unwrap_or_default(), c);
                }
                None => {}
            }
        }
        let stats = stats.and_then(|s| serde_json::from_str(s).ok());
        Boot {
            kind: name.rsplit_once('-').map_or(name, |(k, _)| k).to_string(),
            env: parse_env(boot_env),
            name: name.to_string(),
            console,
            data,
            standin,
            units,
            stats,
        }
    }

    pub fn unit(&self, id: &str, key: &str) -> Option<&str> {
        self.units.get(id)?.get(key).map(String::as_str)
    }

    /// A unit's timestamp property in µs (0 when absent: never happened).
    pub fn unit_us(&self, id: &str, key: &str) -> u64 {
        self.unit(id, key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// JSON reports (objects with a "version" key) printed by a unit.
    pub fn reports(&self, unit: &str) -> Vec<Value> {
        self.data
            .get(&format!("output {unit}"))
            .into_iter()
            .flatten()
            .filter_map(|l| json_in(l))
            .filter(|v| v.get("version").is_some())
            .collect()
    }

    /// Journal lines: (monotonic seconds, message part).
    pub fn journal(&self) -> Vec<(f64, &str)> {
        self.data
            .get("journal")
            .into_iter()
            .flatten()
            .filter_map(|l| {
                let rest = l.strip_prefix('[')?;
                let (ts, msg) = rest.split_once(']')?;
                Some((ts.trim().parse().ok()?, msg))
            })
            .collect()
    }

    /// Monotonic seconds of the first journal line containing `what`.
    pub fn journal_time(&self, what: &str) -> Option<f64> {
        self.journal()
            .iter()
            .find(|(_, m)| m.contains(what))
            .map(|(t, _)| *t)
    }

    /// When the guest's kernel found the root disk (seconds since kernel
    /// start): before it, nothing prewarm does can matter to the boot.
    pub fn disk_seen(&self) -> Option<f64> {
        self.journal_time("virtio_blk virtio0: [vda]")
    }

    /// When the initrd's systemd started (seconds since kernel start): no
    /// prewarm code can run before it, while the firmware and the kernel's
    /// own start vary by half a second and more under TCG.
    pub fn initrd_started(&self) -> Option<f64> {
        self.journal_time("running in system mode")
    }

    /// The stand-in started, seconds after the initrd's systemd did.
    pub fn start_since_initrd(&self) -> Option<f64> {
        Some(self.standin?.0 - self.initrd_started()?)
    }

    /// The stand-in finished reading, seconds after the disk was found.
    pub fn done_since_disk(&self) -> Option<f64> {
        Some(self.standin?.2 - self.disk_seen()?)
    }

    pub fn console_index(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.console.iter().position(|l| pred(l))
    }

    /// Index of the second "Welcome to" line: the first one after switch-root.
    pub fn console_switch_root(&self) -> Option<usize> {
        self.console
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("Welcome to "))
            .nth(1)
            .map(|(i, _)| i)
    }

    /// (hydration start of the marker chunk, chunk → hydration end) from the testbed.
    pub fn hydration(&self, layout: &Layout) -> Result<(u64, BTreeMap<u64, u64>), String> {
        let stats = self.stats.as_ref().ok_or("no testbed stats")?;
        let order = stats
            .hydration_order
            .as_ref()
            .ok_or("stats without hydration_order")?;
        let marker = order
            .iter()
            .find(|e| e.chunk == layout.marker_chunk)
            .ok_or(format!(
                "marker chunk {} never hydrated",
                layout.marker_chunk
            ))?;
        let ends: BTreeMap<u64, u64> = order.iter().map(|e| (e.chunk, e.end_us)).collect();
        Ok((marker.start_us, ends))
    }

    /// How many chunks of the big file were hydrated before the stand-in's
    /// first read (the marker chunk's fetch), of how many.
    pub fn hydrated_before(&self, layout: &Layout) -> Option<(usize, usize)> {
        let (marker_start, ends) = self.hydration(layout).ok()?;
        Some((
            hydrated_by(layout, &ends, marker_start).len(),
            layout.big_chunks.len(),
        ))
    }
}

/// The chunks of the big file hydrated by `t_us` (testbed clock).
pub fn hydrated_by(layout: &Layout, ends: &BTreeMap<u64, u64>, t_us: u64) -> BTreeSet<u64> {
    layout
        .big_chunks
        .iter()
        .filter(|c| ends.get(c).is_some_and(|&e| e <= t_us))
        .copied()
        .collect()
}

/// Strips CRs and ANSI escape sequences.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The JSON object starting at the first '{' of a line, if it parses.
pub fn json_in(line: &str) -> Option<Value> {
    let i = line.find('{')?;
    serde_json::from_str(line[i..].trim_end()).ok()
}

/// Every chunk named by the "chunks_read" ranges ([start, end) pairs) anywhere
/// in a report; fails when ranges of one device overlap (a chunk read twice).
pub fn chunk_set(report: &Value) -> Result<BTreeSet<u64>, String> {
    fn ranges(v: &Value, out: &mut Vec<Vec<(u64, u64)>>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "chunks_read" {
                        collect(x, out);
                    } else {
                        ranges(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| ranges(x, out)),
            _ => {}
        }
    }
    // A list of pairs, or an object {device: list of pairs}.
    fn collect(v: &Value, out: &mut Vec<Vec<(u64, u64)>>) {
        match v {
            Value::Object(m) => m.values().for_each(|x| collect(x, out)),
            Value::Array(a) => out.push(
                a.iter()
                    .filter_map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_u64()?)))
                    .collect(),
            ),
            _ => {}
        }
    }
    let mut per_device = Vec::new();
    ranges(report, &mut per_device);
    if per_device.is_empty() {
        return Err("no chunks_read in the report".into());
    }
    let mut all = BTreeSet::new();
    for dev in per_device {
        let mut seen = BTreeSet::new();
        for (s, e) in dev {
            for c in s..e {
                if !seen.insert(c) {
                    return Err(format!("chunk {c} appears twice in one report"));
                }
            }
        }
        all.extend(seen);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_boot::testdata;

    #[test]
    fn parses_a_recorded_boot() {
        let layout = testdata::layout();
        assert_eq!(layout.big_chunks.len(), 81);
        assert!(!layout.big_chunks.contains(&layout.marker_chunk));
        let boots = testdata::boots();
        let kinds: Vec<&str> = boots.iter().map(|b| b.kind.as_str()).collect();
        assert_eq!(kinds, ["recorded", "with", "without"]);
        let with = &boots[1];
        assert_eq!(with.name, "with-1");
        assert_eq!(with.env.get("qemu_rc").map(String::as_str), Some("0"));
        let (start, marker, done) = with.standin.expect("stand-in readings");
        assert!(start < marker && marker < done);
        // Unit properties, one block per unit.
        assert!(with.unit_us("prewarm.service", "ActiveEnterTimestampMonotonic") > 0);
        assert!(with.unit_us("kubelet.service", "ExecMainStartTimestampMonotonic") > 0);
        assert_eq!(with.unit("prewarm.service", "Result"), Some("success"));
        // One JSON report per phase, the INFO lines skipped.
        assert_eq!(with.reports("prewarm-initrd.service").len(), 1);
        assert_eq!(with.reports("prewarm.service").len(), 1);
        assert!(with.journal_time("Switching root.").is_some());
        assert!(with.console_switch_root().is_some());
        assert!(with
            .console
            .iter()
            .all(|l| !l.contains('\x1b') && !l.contains('\r')));
        // Testbed stats: every chunk of the big file hydrated.
        assert!(with.stats.is_some());
        assert_eq!(with.hydrated_before(&layout), Some((81, 81)));
        let without = &boots[2];
        assert!(without.reports("prewarm.service").is_empty());
        assert!(matches!(without.hydrated_before(&layout), Some((n, 81)) if n < 81));
    }

    #[test]
    fn cleans_ansi_and_finds_json() {
        assert_eq!(clean("\x1b[0;32m  OK  \x1b[0m] a\r\n"), "  OK  ] a\n");
        let v = json_in("[ 3.1] prewarm[1]: {\"version\":1,\"x\":2}").unwrap();
        assert_eq!(v["x"], 2);
        assert!(json_in("no json {").is_none());
        assert_eq!(parse_env("a=1\n b = x=y \nnoise\n")["b"], "x=y");
    }

    #[test]
    fn chunk_sets_of_reports() {
        let r: Value = serde_json::from_str(
            r#"{"devices":[{"chunks_read":[[1,3],[7,8]]}],"x":{"chunks_read":{"vda":[[10,11]]}}}"#,
        )
        .unwrap();
        assert_eq!(chunk_set(&r).unwrap(), BTreeSet::from([1, 2, 7, 10]));
        let twice: Value = serde_json::from_str(r#"{"chunks_read":[[1,3],[2,4]]}"#).unwrap();
        assert!(chunk_set(&twice)
            .unwrap_err()
            .contains("chunk 2 appears twice"));
        let none: Value = serde_json::from_str(r#"{"version":1}"#).unwrap();
        assert!(chunk_set(&none).is_err());
    }
}
