//! Every decoder a remote party (or an operator's file) can reach, fed
//! mutated inputs: valid seeds (made here, plus whatever
//! `tests/fuzz-corpus/<target>/` holds) with bytes flipped, inserted,
//! removed and cut off, and raw noise. None may panic; a message that still
//! verifies must say exactly what was signed; and the process's peak memory
//! stays far below what the limits would let one input take.
//!
//! Each target runs `FUZZ_CASES` inputs: 2,000 in the normal test run,
//! 1,000,000 in the opt-in `.ci/fuzz` job. `FUZZ_WRITE_CORPUS=1` writes the
//! seeds made here into `tests/fuzz-corpus/`.

use convoy_agent::config::AgentConfig;
use convoy_server::config::ServerConfig;
use convoy_shared::chunk::{ChunkPos, Reassembler};
use convoy_shared::codec::{Pipeline, by_name};
use convoy_shared::identity::{PublicKey, SecretKey};
use convoy_shared::messages::{self, AgentState, Status, TrainStats, UpdateBody, UpdateChunk};
use convoy_shared::params::{ParamSet, Tensor};
use convoy_shared::strategy::fold::decode_kept;
use convoy_shared::wire::{self, Kind};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::PathBuf;

/// Largest body the envelope targets allow (the server's packet limit).
const MAX_BODY: usize = 1 << 20;
/// Peak resident memory the whole run may reach.
const MAX_RSS_BYTES: u64 = 1 << 30;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// One change to a seed.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, x)| Edit::Flip(at, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..6)
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let n = out.len();
        match *e {
            Edit::Flip(at, x) if n > 0 => out[at % n] ^= x,
            Edit::Insert(at, b) => out.insert(at % (n + 1), b),
            Edit::Remove(at) if n > 0 => {
                out.remove(at % n);
            }
            Edit::Truncate(at) => out.truncate(at % (n + 1)),
            _ => {}
        }
    }
    out
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(target)
}

/// `made` plus the corpus files of `target` (written from `made` when
/// `FUZZ_WRITE_CORPUS` is set).
fn seeds(target: &str, made: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    if std::env::var_os("FUZZ_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus folder");
        for (i, seed) in made.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("corpus file");
        }
    }
    let mut all = made;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        all.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
    }
    all
}

/// Runs `check` on `cases()` mutated seeds and noise.
fn fuzz(target: &str, made: Vec<Vec<u8>>, check: impl Fn(&[u8], &[u8])) {
    let seeds = seeds(target, made);
    assert!(!seeds.is_empty(), "{target}: no seeds");
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..seeds.len(),
        edits(),
        0u8..10,
        prop::collection::vec(any::<u8>(), 0..96),
    );
    runner
        .run(&strategy, |(i, edits, dice, noise)| {
            let seed = &seeds[i];
            // one input in ten is noise, the rest mutated seeds
            let input = if dice == 0 {
                noise
            } else {
                mutate(seed, &edits)
            };
            check(seed, &input);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    let peak = peak_rss();
    assert!(
        peak < MAX_RSS_BYTES,
        "{target}: peak RSS {peak} B over {MAX_RSS_BYTES}"
    );
}

/// The process's peak resident set (`VmHWM`), bytes; 0 where unknown.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn key() -> SecretKey {
    SecretKey::from_seed([3; 32])
}

fn update_set() -> ParamSet {
    ParamSet {
        tensors: vec![
            Tensor {
                name: "w".into(),
                shape: vec![4, 8],
                data: (0..32).map(|i| (i as f32 - 16.0) / 7.0).collect(),
            },
            Tensor {
                name: "b".into(),
                shape: vec![8],
                data: (0..8).map(|i| i as f32 / 3.0).collect(),
            },
        ],
    }
}

const TOPIC: &str = "convoy/v1/fuzz/update/car-1";

#[test]
fn envelopes_and_signatures() {
    let chunk = UpdateChunk {
        client: messages::id("car-1").expect("id"),
        round: 7,
        base_version: [5; 32],
        pos: ChunkPos {
            index: 0,
            count: 1,
            total_len: 3,
        },
        data: vec![1, 2, 3],
    };
    let status = Status {
        samples: 100,
        ..Status::new(messages::id("car-1").expect("id"), AgentState::Idle, (1, 2))
    };
    let made = vec![
        wire::encode(Kind::UpdateChunk, &chunk, TOPIC, &key()).expect("encodes"),
        wire::encode(Kind::Status, &status, TOPIC, &key()).expect("encodes"),
    ];
    let public = key().public();
    fuzz("envelope", made, |_seed, input| {
        let _ = wire::open(input, MAX_BODY);
        // whatever still verifies says exactly what was signed
        if let Ok(c) =
            wire::decode::<UpdateChunk>(input, Kind::UpdateChunk, MAX_BODY, TOPIC, &public, "car-1")
        {
            assert_eq!(c, chunk, "a changed chunk verified");
        }
        if let Ok(s) =
            wire::decode::<Status>(input, Kind::Status, MAX_BODY, TOPIC, &public, "car-1")
        {
            assert_eq!(s, status, "a changed status verified");
        }
        // under another key or topic nothing verifies
        let other = SecretKey::from_seed([4; 32]).public();
        assert!(wire::decode::<Status>(input, Kind::Status, MAX_BODY, TOPIC, &other, "x").is_err());
        assert!(
            wire::decode::<Status>(input, Kind::Status, MAX_BODY, "other", &public, "x").is_err()
        );
    });
}

#[test]
fn chunk_reassembly() {
    // a seed is a little program: (index, count, total_len, len) per chunk
    let made = vec![
        vec![0, 2, 40, 20, 1, 2, 40, 20],
        vec![0, 1, 5, 5],
        vec![1, 3, 9, 3, 0, 3, 9, 3, 2, 3, 9, 3],
    ];
    const LIMIT: usize = 4096;
    fuzz("chunks", made, |_seed, input| {
        let mut reassembler: Option<Reassembler> = None;
        for op in input.chunks(4) {
            let [index, count, total, len] = [0, 1, 2, 3].map(|i| *op.get(i).unwrap_or(&0) as u32);
            // scaled so totals can pass the limit too
            let pos = ChunkPos {
                index,
                count,
                total_len: total * 40,
            };
            let data = vec![7u8; len as usize];
            match reassembler.as_mut() {
                None => reassembler = Reassembler::new(pos, data.len(), LIMIT).ok(),
                Some(r) => {
                    let _ = r.insert(pos, &data);
                }
            }
        }
        if let Some(whole) = reassembler.and_then(Reassembler::finish) {
            assert!(whole.len() <= LIMIT, "{} bytes past the limit", whole.len());
        }
    });
}

const CODECS: [&str; 9] = [
    "fp32",
    "fp16+zstd",
    "bf16",
    "q8+deflate",
    "q4",
    "q2",
    "sign",
    "topk:0.25+q8+zstd",
    "randk:0.5+q4+deflate",
];

#[test]
fn codecs_and_kept_updates() {
    let set = update_set();
    let layout = set.layout();
    let pipelines: Vec<Pipeline> = CODECS.iter().map(|c| by_name(c).expect("codec")).collect();
    let made: Vec<Vec<u8>> = pipelines
        .iter()
        .map(|p| {
            let body = UpdateBody {
                samples: 10,
                head: 0,
                stats: TrainStats::default(),
                codec: *p,
                encoded: p.encode(&set, 9),
            };
            postcard::to_allocvec(&body).expect("encodes")
        })
        .collect();
    fuzz("codecs", made, |_seed, input| {
        let mut scratch = ParamSet::zeros(&layout);
        for p in &pipelines {
            if let Ok(out) = p.decode(input, &layout) {
                assert_eq!(out.layout(), layout);
            }
            let _ = decode_kept(input, p, 1, &mut scratch);
        }
    });
}

#[test]
fn key_files() {
    let made = vec![
        key().to_hex().into_bytes(),
        key().public().to_string().into_bytes(),
    ];
    fuzz("keys", made, |_seed, input| {
        let text = String::from_utf8_lossy(input);
        let _ = SecretKey::from_hex(&text, "fuzz");
        let _ = PublicKey::from_hex(&text, "fuzz");
    });
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../systemd")
            .join(name),
    )
    .expect("example config")
}

#[test]
fn server_config() {
    fuzz(
        "server-config",
        vec![example("server.example.toml")],
        |_seed, input| {
            if let Ok(config) = toml::from_str::<ServerConfig>(&String::from_utf8_lossy(input)) {
                let _ = config.validate();
            }
        },
    );
}

#[test]
fn agent_config() {
    fuzz(
        "agent-config",
        vec![example("agent.example.toml")],
        |_seed, input| {
            if let Ok(config) = toml::from_str::<AgentConfig>(&String::from_utf8_lossy(input)) {
                let _ = config.validate();
            }
        },
    );
}
