//! Property-based fuzzing of the two untrusted-input parsers: the manifest
//! decoder (`Manifest::decode`) and the list parser (`parse_list`).
//!
//! Stable Rust has no cargo-fuzz, so proptest does the mutating: valid
//! encodings get bit flips, byte writes, truncations, insertions, deletions
//! and splices from another encoding, and are then re-framed (payload length
//! and CRC recomputed) so that the checksum does not hide the payload from
//! the decoder; random bytes are tried framed and unframed too. Every input
//! must decode without panicking, and whatever decodes must pass
//! `Manifest::check_bounds` and survive an encode/decode round trip.
//!
//! The quick tests run a few thousand cases in every `cargo test`; the
//! `#[ignore]`d `*_full` tests run `PREWARM_FUZZ_CASES` (default 100,000)
//! cases per target, which `.ci/run` does in release mode.
//!
//! `fuzz-corpus/` holds interesting inputs (each crafted attack among them),
//! replayed by `corpus_*`: `fuzz-corpus/manifest/EXPECTED` says, per file,
//! `ok` or the field its refusal must name; files not listed must merely not
//! panic.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use prewarm_core::manifest::codec::MAGIC;
use prewarm_core::manifest::{
    DeviceHeader, Manifest, ManifestDevice, ManifestDirectory, ManifestError, ManifestFile,
    ManifestImage,
};
use prewarm_core::map::{ByteRange, Extent};
use prewarm_core::{parse_list, PlanConfig, WarningKind};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

/// Cases per target in the quick (default) tests.
const QUICK_CASES: u32 = 3_000;
/// Cases per target in the full tests unless `PREWARM_FUZZ_CASES` says.
const FULL_CASES: u32 = 100_000;
/// Header length: magic, version, payload length.
const HEADER: usize = 20;

fn full_cases() -> u32 {
    match std::env::var("PREWARM_FUZZ_CASES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PREWARM_FUZZ_CASES={v:?} is not a number")),
        Err(_) => FULL_CASES,
    }
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(kind)
}

// ---------------------------------------------------------------- manifests

/// A valid manifest, varied by the numbers given (all within bounds).
fn seed_manifest(files: usize, extents: usize, ranges: usize, salt: u64) -> Manifest {
    let mut x = salt | 1;
    let mut next = move || {
        // xorshift64: deterministic, varied.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let dev_size = 1u64 << 34;
    let mut phys = 1u64 << 20;
    let files = (0..files)
        .map(|i| {
            let mut logical = 0u64;
            let extents: Vec<Extent> = (0..extents)
                .map(|_| {
                    logical += 4096 * (next() % 4);
                    let length = 4096 * (1 + next() % 16);
                    phys = (phys + 4096 * (next() % 64)) % (dev_size / 2);
                    let e = Extent {
                        logical,
                        physical: phys,
                        length,
                    };
                    logical += length;
                    phys += length;
                    e
                })
                .collect();
            let size = logical + next() % 4096;
            let file_ranges: Vec<ByteRange> = (0..ranges)
                .map(|k| ByteRange {
                    offset: (k as u64) * 8192 % (size + 1),
                    len: 1 + next() % 4096,
                })
                .filter(|r| r.offset + r.len <= size.div_ceil(65536) * 65536)
                .collect();
            // Every other file named for some ranges only (format version 2).
            let named = (i % 2 == 1).then(|| {
                (0..ranges as u64)
                    .map(|k| ByteRange {
                        offset: k * 16384,
                        len: 1 + next() % 8192,
                    })
                    .filter(|r| r.offset + r.len <= size)
                    .collect()
            });
            let dirs = ["usr/bin", "usr/lib64", "var/lib/containerd/x", "etc"];
            ManifestFile {
                path: PathBuf::from(format!("{}/f{i}-{}", dirs[i % dirs.len()], next() % 100)),
                ino: next() % 1_000_000,
                size,
                mtime_sec: (next() % 2_000_000_000) as i64 - 1_000_000,
                mtime_nsec: (next() % 1_000_000_000) as u32,
                priority: (next() % 4) as u32 * 10,
                extents,
                directory: named.is_none() && file_ranges.is_empty() && i % 5 == 4,
                file_ranges,
                ranges: named,
            }
        })
        .collect();
    let uuid = [0x5a ^ (salt as u8); 16];
    // Two of three manifests carry images (format version 3), sharing a
    // base layer as images do.
    let images = (0..(salt % 3).min(2))
        .map(|i| ManifestImage {
            reference: format!("app{i}:v{}", next() % 10),
            image: format!("docker.io/library/app{i}:v1"),
            digest: format!("sha256:{:064x}", next()),
            priority: (next() % 4) as u32 * 10 + 100,
            directories: (0..=(i + next() % 3))
                .map(|k| ManifestDirectory {
                    uuid,
                    path: PathBuf::from(format!(
                        "var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/{}/fs",
                        if k == 0 { 1 } else { next() % 1000 }
                    )),
                })
                .collect(),
        })
        .collect();
    Manifest {
        created_unix: 1_763_000_000 + salt % 1000,
        tool: "prewarm fuzz".into(),
        plan: PlanConfig::default(),
        devices: vec![ManifestDevice {
            header: DeviceHeader {
                fs_type: if salt % 2 == 0 { "ext4" } else { "xfs" }.into(),
                uuid,
                size: dev_size,
                logical_block_size: 512,
                node_hint: "/dev/nvme0n1p1".into(),
            },
            files,
        }],
        images,
    }
}

/// Recompute the payload length and CRC of `bytes` (which may be anything
/// at least as long as the header), so the decoder reads the payload.
fn reframe(bytes: &mut Vec<u8>) {
    if bytes.len() < HEADER {
        return;
    }
    let payload = (bytes.len() - HEADER) as u64;
    bytes[12..20].copy_from_slice(&payload.to_le_bytes());
    let crc = crc32fast::hash(bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
}

/// Frame `payload` as a version-1 manifest with a valid CRC.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(payload);
    reframe(&mut out);
    out
}

/// One mutation of an encoding's payload.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Replace a stretch with a stretch of another encoding.
    Splice(usize, usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        3 => (any::<usize>(), prop_oneof![Just(0u8), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()])
            .prop_map(|(p, v)| Mutation::SetByte(p, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), prop::collection::vec(
                prop_oneof![Just(0xffu8), Just(0x80), Just(0x01), any::<u8>()], 1..12))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => (any::<usize>(), 1usize..16).prop_map(|(p, n)| Mutation::Delete(p, n)),
        2 => (any::<usize>(), any::<usize>(), any::<usize>(), 1usize..40)
            .prop_map(|(p, n, q, m)| Mutation::Splice(p, n % 40, q, m)),
    ]
}

/// Apply `muts` to the payload of `bytes` (the header and CRC stay out of
/// reach; `reframe` rewrites them), `donor` giving splices their bytes.
fn mutate(bytes: &[u8], donor: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut payload = bytes[HEADER..bytes.len() - 4].to_vec();
    let donor = donor
        .get(HEADER..donor.len().saturating_sub(4))
        .unwrap_or(&[]);
    for m in muts {
        let n = payload.len();
        match m {
            Mutation::FlipBit(p, b) if n > 0 => payload[p % n] ^= 1 << b,
            Mutation::SetByte(p, v) if n > 0 => payload[p % n] = *v,
            Mutation::Truncate(p) => payload.truncate(p % (n + 1)),
            Mutation::Insert(p, b) => {
                let p = p % (n + 1);
                payload.splice(p..p, b.iter().copied());
            }
            Mutation::Delete(p, k) if n > 0 => {
                let p = p % n;
                payload.drain(p..(p + k).min(n));
            }
            Mutation::Splice(p, k, q, m) if !donor.is_empty() => {
                let p = p % (n + 1);
                let end = (p + k).min(n);
                let q = q % donor.len();
                let from = &donor[q..(q + m).min(donor.len())];
                payload.splice(p..end, from.iter().copied());
            }
            _ => {}
        }
    }
    let mut out = bytes[..HEADER].to_vec();
    out.extend_from_slice(&payload);
    reframe(&mut out);
    out
}

/// The property every input must satisfy: decoding does not panic (a panic
/// fails the case), and what decodes is within bounds and round-trips.
fn check_manifest(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(m) = Manifest::decode(bytes) else {
        return Ok(());
    };
    if let Err(e) = m.check_bounds() {
        return Err(TestCaseError::fail(format!(
            "decoded but out of bounds: {e}"
        )));
    }
    let again = Manifest::decode(&m.encode())
        .map_err(|e| TestCaseError::fail(format!("re-encoding does not decode: {e}")))?;
    let mut sorted = m.clone();
    for d in &mut sorted.devices {
        d.files.sort_by(|a, b| a.path.cmp(&b.path));
    }
    prop_assert_eq!(again, sorted);
    Ok(())
}

/// Valid encodings to mutate: generated ones and the corpus.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = [
        (0, 0, 0, 1),
        (1, 1, 1, 2),
        (3, 4, 2, 3),
        (8, 2, 0, 4),
        (2, 0, 3, 5),
    ]
    .iter()
    .map(|&(f, e, r, s)| seed_manifest(f, e, r, s).encode())
    .collect();
    seeds.extend(corpus_files("manifest", "bin").into_iter().map(|(_, b)| b));
    seeds
        .into_iter()
        .filter(|b| b.len() >= HEADER + 4)
        .collect()
}

fn fuzz_manifest_decoder(cases: u32) {
    let seeds = seeds();
    let n = seeds.len();
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = prop_oneof![
        // Mutated valid encodings, re-framed.
        6 => (0..n, 0..n, prop::collection::vec(mutation(), 1..6))
            .prop_map(move |(s, d, m)| (s, d, m, Vec::new(), 0u8)),
        // Random payloads, framed with a valid CRC.
        1 => prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| (0, 0, Vec::new(), b, 1u8)),
        // Random bytes, unframed (and with the magic).
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| (0, 0, Vec::new(), b, 2u8)),
        // A generated manifest, mutated.
        2 => ((0usize..5, 0usize..5, 0usize..4, any::<u64>()), prop::collection::vec(mutation(), 0..4))
            .prop_map(|(g, m)| {
                let bytes = seed_manifest(g.0, g.1, g.2, g.3).encode();
                (0, 0, m, bytes, 3u8)
            }),
    ];
    runner
        .run(&strategy, |(s, d, muts, raw, kind)| {
            let input = match kind {
                0 => mutate(&seeds[s], &seeds[d], &muts),
                1 => framed(&raw),
                2 => {
                    check_manifest(&raw)?;
                    let mut with_magic = MAGIC.to_vec();
                    with_magic.extend_from_slice(&raw);
                    with_magic
                }
                _ => mutate(&raw, &seeds[0], &muts),
            };
            check_manifest(&input)
        })
        .unwrap_or_else(|e| panic!("manifest decoder: {e}"));
}

#[test]
fn manifest_decoder_quick() {
    fuzz_manifest_decoder(QUICK_CASES);
}

#[test]
#[ignore = "the long run: .ci/run runs it in release mode"]
fn manifest_decoder_full() {
    fuzz_manifest_decoder(full_cases());
}

// -------------------------------------------------------------------- lists

/// The list parser's properties: no panic; every entry is an absolute
/// NUL-free path named by a real line; every warning names a line; entries
/// printed back as `PRIORITY PATH` parse to the same entries.
fn check_list(text: &[u8]) -> Result<(), TestCaseError> {
    let list = Path::new("fuzz.list");
    let (entries, warnings) = parse_list(text, list);
    let lines = text.split(|&b| b == b'\n').count();
    prop_assert!(entries.len() + warnings.len() <= lines);
    for w in &warnings {
        prop_assert_eq!(w.kind, WarningKind::BadLine);
        match &w.origin {
            Some(prewarm_core::Origin::List { line, .. }) => {
                prop_assert!((1..=lines).contains(line), "line {} of {}", line, lines)
            }
            other => prop_assert!(false, "warning without a line: {:?}", other),
        }
    }
    let mut printed = Vec::new();
    for e in &entries {
        let bytes = e.path.as_os_str().as_bytes();
        prop_assert!(bytes.starts_with(b"/") && !bytes.contains(&0) && !bytes.contains(&b'\n'));
        for w in e.ranges.iter().flatten().collect::<Vec<_>>().windows(2) {
            prop_assert!(
                w[0].end() < w[1].offset,
                "ranges not sorted and apart: {:?}",
                w
            );
        }
        // What a list writer (a recording) prints reads back the same.
        let line = prewarm_core::format_line(e.priority, e.ranges.as_deref(), &e.path);
        prop_assert!(line.is_some(), "{:?} cannot be written", e.path);
        printed.extend(line.unwrap_or_default());
        printed.push(b'\n');
    }
    let (again, bad) = parse_list(&printed, list);
    prop_assert!(bad.is_empty(), "{:?}", bad);
    type Entry = (u32, PathBuf, Option<Vec<ByteRange>>);
    let pairs = |v: &[prewarm_core::SourceEntry]| -> Vec<Entry> {
        v.iter()
            .map(|e| (e.priority, e.path.clone(), e.ranges.clone()))
            .collect()
    };
    prop_assert_eq!(pairs(&again), pairs(&entries));
    Ok(())
}

fn list_line() -> impl Strategy<Value = Vec<u8>> {
    let word = prop::collection::vec(
        prop_oneof![
            Just(b'/'),
            Just(b' '),
            Just(b'\t'),
            Just(b'\r'),
            Just(b'#'),
            Just(b'*'),
            Just(0u8),
            b'0'..=b'9',
            b'a'..=b'z',
            any::<u8>(),
        ],
        0..24,
    );
    prop_oneof![
        word.clone(),
        (any::<u32>(), word.clone()).prop_map(|(p, w)| {
            let mut l = format!("{p} /").into_bytes();
            l.extend(w);
            l
        }),
        (any::<u64>(), word.clone()).prop_map(|(p, w)| {
            let mut l = format!("  {p}\t").into_bytes();
            l.extend(w);
            l
        }),
        // Byte ranges, well-formed or not.
        (
            prop::collection::vec((any::<u64>(), 0u64..100_000), 0..5),
            word,
        )
            .prop_map(|(ranges, w)| {
                let words: Vec<String> = ranges.iter().map(|(o, l)| format!("{o}+{l}")).collect();
                let mut l = format!("10 @{} ", words.join(",")).into_bytes();
                l.extend(w);
                l
            }),
    ]
}

fn fuzz_list_parser(cases: u32) {
    let corpus: Vec<Vec<u8>> = corpus_files("list", "list")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let n = corpus.len().max(1);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = prop_oneof![
        3 => prop::collection::vec(list_line(), 0..8).prop_map(|l| l.join(&b'\n')),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ];
    runner
        .run(&strategy, |text| check_list(&text))
        .unwrap_or_else(|e| panic!("list parser: {e}"));
    // Mutations of the corpus, seeded from it.
    let strategy = (0..n, prop::collection::vec(mutation(), 1..6));
    runner
        .run(&strategy, |(i, muts)| {
            let Some(list) = corpus.get(i) else {
                return Ok(());
            };
            let wrapped = framed(list);
            let mutated = mutate(&wrapped, &wrapped, &muts);
            check_list(&mutated[HEADER..mutated.len() - 4])
        })
        .unwrap_or_else(|e| panic!("list parser (corpus mutations): {e}"));
}

#[test]
fn list_parser_quick() {
    fuzz_list_parser(QUICK_CASES);
}

#[test]
#[ignore = "the long run: .ci/run runs it in release mode"]
fn list_parser_full() {
    fuzz_list_parser(full_cases());
}

// ------------------------------------------------------------------ corpus

fn corpus_files(kind: &str, ext: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(kind);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new(ext)))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// The field a refusal names, whatever its kind.
fn field_of(e: &ManifestError) -> String {
    match e {
        ManifestError::Invalid { field, .. }
        | ManifestError::Truncated { field, .. }
        | ManifestError::OutOfBounds { field, .. } => field.clone(),
        other => other.to_string(),
    }
}

#[test]
fn corpus_manifests_decode_as_expected() {
    let expected_path = corpus_dir("manifest").join("EXPECTED");
    let expected = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
    let files = corpus_files("manifest", "bin");
    assert!(files.len() >= 6, "{} corpus files", files.len());
    let mut listed = 0;
    for (path, bytes) in &files {
        let name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
        let want = expected
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(f, _)| *f == name)
            .map(|(_, w)| w.trim());
        let got = Manifest::decode(bytes);
        match (want, &got) {
            (Some("ok"), Ok(m)) => m.check_bounds().unwrap_or_else(|e| panic!("{name}: {e}")),
            (Some("ok"), Err(e)) => panic!("{name}: expected to decode, got {e}"),
            (Some(field), Err(e)) => assert!(
                field_of(e) == field,
                "{name}: expected a refusal naming {field}, got {e}"
            ),
            (Some(field), Ok(_)) => {
                panic!("{name}: expected a refusal naming {field}, but it decoded")
            }
            (None, _) => {}
        }
        listed += usize::from(want.is_some());
        check_manifest(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(listed >= 6, "EXPECTED names {listed} corpus files");
}

#[test]
fn corpus_lists_parse() {
    let files = corpus_files("list", "list");
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        check_list(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

// ---------------------------------------------------------- crafted attacks

/// One file, with the given path, size, extents and file ranges, in an
/// otherwise valid manifest.
fn crafted(path: &str, size: u64, extents: Vec<Extent>, ranges: Vec<ByteRange>) -> Manifest {
    let mut m = seed_manifest(0, 0, 0, 7);
    m.devices[0].files.push(ManifestFile {
        path: PathBuf::from(OsStr::from_bytes(path.as_bytes())),
        ino: 12,
        size,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
        priority: 10,
        extents,
        file_ranges: ranges,
        ranges: None,
        directory: false,
    });
    m
}

/// The crafted attacks, each with the field its refusal must name.
fn attacks() -> Vec<(&'static str, Manifest, &'static str)> {
    let range = |offset, len| vec![ByteRange { offset, len }];
    let mut max_io = seed_manifest(1, 1, 0, 9);
    max_io.plan.max_io = 1 << 30;
    let mut nil_uuid = seed_manifest(1, 1, 0, 10);
    nil_uuid.devices[0].header.uuid = [0; 16];
    vec![
        (
            "bad-range-2p50",
            crafted("usr/bin/kubelet", 4096, vec![], range(0, 1 << 50)),
            "devices[0].files[0].file_ranges[0].len",
        ),
        (
            "bad-range-u64max",
            crafted(
                "usr/bin/kubelet",
                4096,
                vec![],
                range(u64::MAX - 10, u64::MAX - 10),
            ),
            "devices[0].files[0].file_ranges[0].len",
        ),
        (
            "bad-range-u64max-offset",
            crafted("usr/bin/kubelet", 4096, vec![], range(u64::MAX - 4, 100)),
            "devices[0].files[0].file_ranges[0].len",
        ),
        (
            "bad-extent-past-file",
            crafted(
                "usr/bin/kubelet",
                4096,
                vec![Extent {
                    logical: 0,
                    physical: 1 << 20,
                    length: 1 << 30,
                }],
                vec![],
            ),
            "devices[0].files[0].extents[0].length",
        ),
        (
            "bad-path-dotdot",
            crafted("../../../../etc/hostname", 10, vec![], range(0, 10)),
            "devices[0].files[0].path",
        ),
        (
            "bad-path-absolute",
            crafted("/etc/passwd", 10, vec![], range(0, 10)),
            "devices[0].files[0].path",
        ),
        (
            "bad-path-nul",
            crafted("etc/pass\0wd", 10, vec![], range(0, 10)),
            "devices[0].files[0].path",
        ),
        ("bad-max-io-1g", max_io, "plan.max_io"),
        ("bad-nil-uuid", nil_uuid, "devices[0].uuid"),
        ("ok-small", seed_manifest(3, 2, 1, 11), "ok"),
        (
            "bad-image-directory-dotdot",
            with_image(|i| i.directories[0].path = "../../../etc".into()),
            "images[0].directories[0].path",
        ),
        (
            "bad-image-directory-absolute",
            with_image(|i| i.directories[0].path = "/etc".into()),
            "images[0].directories[0].path",
        ),
        (
            "bad-image-filesystem",
            with_image(|i| i.directories[0].uuid = [0x77; 16]),
            "images[0].directories[0].filesystem",
        ),
        (
            "bad-image-digest",
            with_image(|i| i.digest = "sha256:../../../etc/passwd".into()),
            "images[0].digest",
        ),
        (
            "bad-image-reference-escape",
            with_image(|i| i.reference = "app\x1b[2J:v1".into()),
            "images[0].reference",
        ),
        ("ok-images", seed_manifest(2, 1, 1, 14), "ok"),
    ]
}

/// A valid manifest with two images, the first changed by `change`.
fn with_image(change: impl FnOnce(&mut ManifestImage)) -> Manifest {
    let mut m = seed_manifest(1, 1, 0, 17);
    assert_eq!(m.images.len(), 2);
    change(&mut m.images[0]);
    m
}

#[test]
fn crafted_attacks_are_refused_naming_the_field() {
    for (name, m, field) in attacks() {
        let got = Manifest::decode(&m.encode());
        match (field, got) {
            ("ok", Ok(_)) => {}
            ("ok", Err(e)) => panic!("{name}: {e}"),
            (_, Ok(_)) => panic!("{name}: decoded"),
            (field, Err(e)) => {
                assert!(matches!(e, ManifestError::Invalid { .. }), "{name}: {e:?}");
                assert_eq!(field_of(&e), field, "{name}: {e}");
                assert!(e.to_string().contains(field), "{name}: {e}");
            }
        }
        // The same bounds hold in memory.
        assert_eq!(m.check_bounds().is_ok(), field == "ok", "{name}");
    }
}

/// Write the crafted attacks into `PREWARM_WRITE_CORPUS` (a directory): how
/// `fuzz-corpus/manifest` was made. Never run by default, and never on the
/// tracked corpus unless a developer asks.
#[test]
#[ignore = "writes files: run by hand with PREWARM_WRITE_CORPUS=DIR"]
fn write_crafted_corpus() {
    let Some(dir) = std::env::var_os("PREWARM_WRITE_CORPUS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut expected = String::new();
    for (name, m, field) in attacks() {
        std::fs::write(dir.join(format!("{name}.bin")), m.encode()).unwrap();
        expected.push_str(&format!("{name}.bin\t{field}\n"));
    }
    std::fs::write(dir.join("EXPECTED"), expected).unwrap();
}
