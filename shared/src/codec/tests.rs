use super::*;
use crate::params::Tensor;
use proptest::prelude::*;

fn set(values: Vec<f32>) -> ParamSet {
    ParamSet {
        tensors: vec![Tensor {
            name: "w".into(),
            shape: vec![values.len() as u32],
            data: values,
        }],
    }
}

fn two_tensors(a: Vec<f32>, b: Vec<f32>) -> ParamSet {
    ParamSet {
        tensors: vec![
            Tensor {
                name: "a".into(),
                shape: vec![a.len() as u32],
                data: a,
            },
            Tensor {
                name: "b".into(),
                shape: vec![b.len() as u32],
                data: b,
            },
        ],
    }
}

const ALL: &[&str] = &[
    "fp32",
    "fp16",
    "bf16",
    "q8",
    "q4",
    "q2",
    "sign",
    "ternary",
    "fp32+zstd",
    "q8+deflate",
    "topk:0.1+fp32",
    "topk:0.01+q8+zstd",
    "topk:0.001+q4",
    "randk:0.05+q8",
    "topk:0.2+sign+zstd",
    "topk:0.1+ternary+deflate",
];

#[test]
fn specs_parse_to_their_canonical_names() {
    for spec in ALL {
        let p = by_name(spec).unwrap();
        assert_eq!(&p.name(), spec);
        assert_eq!(by_name(&p.name()).unwrap(), p);
    }
    assert_eq!(
        by_name("topk:0.01 + q8 + zstd").unwrap().name(),
        "topk:0.01+q8+zstd"
    );
    assert_eq!(by_name("topk:0.5").unwrap().name(), "topk:0.5+fp32");
    for bad in [
        "",
        "zip9",
        "q8+topk:0.1",
        "topk:0",
        "topk:2",
        "topk:x",
        "zstd+q8",
        "q8+q4",
        "q8+zstd+zstd",
        "bogus:0.1",
    ] {
        let err = by_name(bad).unwrap_err();
        assert_eq!(err.reason(), "unknown_codec");
        assert!(err.to_string().contains("expected"), "{err}");
    }
}

#[test]
fn topk_keeps_the_largest_values_exactly() {
    let values: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 1000) as f32 - 500.0)
        .collect();
    let update = set(values.clone());
    let p = by_name("topk:0.01+fp32+zstd").unwrap();
    let decoded = p.decode(&p.encode(&update, 1), &update.layout()).unwrap();
    let kept: Vec<(usize, f32)> = decoded
        .values()
        .enumerate()
        .filter(|(_, v)| *v != 0.0)
        .collect();
    assert_eq!(kept.len(), 10);
    let mut magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    magnitudes.sort_by(|a, b| b.total_cmp(a));
    for (i, v) in kept {
        assert_eq!(v, values[i]);
        assert!(v.abs() >= magnitudes[9]);
    }
}

#[test]
fn sparse_pipelines_are_hundreds_of_times_smaller() {
    let values: Vec<f32> = (0..101_770)
        .map(|i| ((i as f32) * 0.37).sin() * 0.01)
        .collect();
    let update = set(values);
    let dense = by_name("fp32").unwrap().encode(&update, 0).len();
    let sparse = by_name("topk:0.001+q4+zstd")
        .unwrap()
        .encode(&update, 0)
        .len();
    assert_eq!(dense, 101_770 * 4);
    assert!(dense / sparse > 300, "{dense} / {sparse}");
}

#[test]
fn stochastic_rounding_is_unbiased() {
    // One block with values between the q2/q4 levels: the mean of many
    // independent encodings converges to the value (fixed seeds).
    let values: Vec<f32> = (0..64).map(|i| (i as f32 / 63.0) * 2.0 - 1.0).collect();
    let update = set(values.clone());
    for spec in ["q2", "q4", "q8"] {
        let p = by_name(spec).unwrap();
        let trials = 4000;
        let mut mean = vec![0f64; values.len()];
        for seed in 0..trials {
            let d = p
                .decode(&p.encode(&update, seed), &update.layout())
                .unwrap();
            for (m, v) in mean.iter_mut().zip(d.values()) {
                *m += v as f64 / trials as f64;
            }
        }
        for (m, v) in mean.iter().zip(&values) {
            // q2 has the widest steps (variance <= 1/4 per trial): 5 sigma
            assert!(
                (m - *v as f64).abs() < 5.0 * 0.5 / (trials as f64).sqrt(),
                "{spec}: {m} vs {v}"
            );
        }
    }
}

#[test]
fn error_feedback_delivers_everything_eventually() {
    // Sending the same update every round through top-k with a residual:
    // what arrives in total tracks what was meant, within one residual.
    let update = set((0..500)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 100.0)
        .collect());
    let p = by_name("topk:0.02+q8").unwrap();
    let mut residual = ParamSet::zeros(&update.layout());
    let mut delivered = ParamSet::zeros(&update.layout());
    let rounds = 200;
    for r in 0..rounds {
        let mut corrected = update.clone();
        corrected.add_scaled(&residual, 1.0).unwrap();
        let (_, decoded) = p.round_trip(&corrected, r);
        residual = corrected.sub(&decoded).unwrap();
        delivered.add_scaled(&decoded, 1.0).unwrap();
    }
    let mut expected = ParamSet::zeros(&update.layout());
    expected.add_scaled(&update, rounds as f32).unwrap();
    let gap = expected.sub(&delivered).unwrap();
    assert!(
        (gap.l2_norm() - residual.l2_norm()).abs() < 1e-2,
        "gap is the residual"
    );
    assert!(
        residual.l2_norm() < update.l2_norm() * 60.0,
        "residual stays bounded"
    );
}

#[test]
fn zstd_bomb_is_refused_before_allocating() {
    let layout = set(vec![0.0; 10]).layout();
    let bomb = zstd::bulk::compress(&vec![0u8; 50 << 20], 3).unwrap();
    let err = by_name("fp32+zstd")
        .unwrap()
        .decode(&bomb, &layout)
        .unwrap_err();
    assert_eq!(err.reason(), "oversized");
    let deflate_bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; 50 << 20], 6);
    // refused by the inflate limit, not after inflating 50 MiB (which
    // would fail later as the wrong shape)
    let err = by_name("fp32+deflate")
        .unwrap()
        .decode(&deflate_bomb, &layout)
        .unwrap_err();
    assert_eq!(err.reason(), "malformed", "{err}");
    assert!(err.to_string().contains("HasMoreOutput"), "{err}");
}

#[test]
fn wrong_lengths_are_wrong_shape() {
    let update = set(vec![1.0; 40]);
    for spec in ["fp32", "fp16", "q4", "sign"] {
        let p = by_name(spec).unwrap();
        let mut bytes = p.encode(&update, 0);
        bytes.push(0);
        assert_eq!(
            p.decode(&bytes, &update.layout()).unwrap_err().reason(),
            "wrong_shape",
            "{spec}"
        );
        bytes.truncate(bytes.len() - 3);
        assert_eq!(
            p.decode(&bytes, &update.layout()).unwrap_err().reason(),
            "wrong_shape",
            "{spec}"
        );
    }
}

proptest! {
    #[test]
    fn lossless_pipelines_round_trip(a in proptest::collection::vec(-1e3f32..1e3, 1..200), b in proptest::collection::vec(-1e3f32..1e3, 1..50)) {
        let update = two_tensors(a, b);
        for spec in ["fp32", "fp32+zstd", "fp32+deflate", "topk:1+fp32"] {
            let p = by_name(spec).unwrap();
            prop_assert_eq!(&p.decode(&p.encode(&update, 3), &update.layout()).unwrap(), &update);
        }
    }

    #[test]
    fn error_is_bounded_per_stage(values in proptest::collection::vec(-10f32..10.0, 1..400), seed in any::<u64>()) {
        let update = set(values.clone());
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mean_abs = values.iter().map(|v| v.abs()).sum::<f32>() / values.len() as f32;
        for (spec, bound) in [("fp16", 0.0f32), ("bf16", 0.0), ("q8", max / 127.0), ("q4", max / 7.0), ("q2", max)] {
            let p = by_name(spec).unwrap();
            let (bytes, d) = p.round_trip(&update, seed);
            prop_assert_eq!(bytes.len(), p.quant.encoded_len(values.len()));
            for (a, b) in values.iter().zip(d.values()) {
                let tol = match spec {
                    "fp16" => a.abs() / 1024.0 + 1e-6,
                    "bf16" => a.abs() / 128.0 + 1e-30,
                    _ => bound * 1.0001 + 1e-6,
                };
                prop_assert!((a - b).abs() <= tol, "{} {} vs {}", spec, a, b);
            }
        }
        let (_, d) = by_name("sign").unwrap().round_trip(&update, seed);
        for (a, b) in values.iter().zip(d.values()) {
            prop_assert!((b.abs() - mean_abs).abs() <= 1e-4 * mean_abs.max(1.0));
            prop_assert!(*a == 0.0 || (a.signum() == b.signum()) || b.abs() == 0.0);
        }
        let (_, d) = by_name("ternary").unwrap().round_trip(&update, seed);
        let mags: Vec<f32> = d.values().map(f32::abs).filter(|m| *m > 0.0).collect();
        prop_assert!(mags.windows(2).all(|w| w[0] == w[1]), "one magnitude");
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), n in 1usize..80) {
        let layout = two_tensors(vec![0.0; n], vec![0.0; 3]).layout();
        for spec in ALL {
            let _ = by_name(spec).unwrap().decode(&bytes, &layout);
        }
    }

    #[test]
    fn sparse_decode_of_mutated_bytes_never_panics(values in proptest::collection::vec(-5f32..5.0, 10..200), flip in any::<usize>(), to in any::<u8>()) {
        let update = set(values);
        for spec in ["topk:0.1+q8", "randk:0.2+q4", "topk:0.05+ternary"] {
            let p = by_name(spec).unwrap();
            let mut bytes = p.encode(&update, 1);
            let at = flip % bytes.len();
            bytes[at] = to;
            if let Ok(d) = p.decode(&bytes, &update.layout()) {
                prop_assert_eq!(d.numel(), update.numel());
            }
        }
    }
}
