use super::*;

fn set(values: &[f32]) -> ParamSet {
    ParamSet::vector(values)
}

fn values(p: &ParamSet) -> Vec<f32> {
    p.values().collect()
}

/// Runs `opt` for rounds whose mean update is `deltas[k]`, from `x0`.
fn run(opt: ServerOpt, lr: f64, x0: f32, deltas: &[f32]) -> Vec<f32> {
    let mut x = set(&[x0]);
    let mut state = opt.init(&x);
    deltas
        .iter()
        .map(|d| {
            let target = set(&[x.tensors[0].data[0] + d]);
            x = opt.step(&x, &target, &mut state, lr).unwrap();
            x.tensors[0].data[0]
        })
        .collect()
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn fedavg_moves_by_the_learning_rate_times_the_mean_update() {
    close(&run(ServerOpt::FedAvg, 0.5, 1.0, &[2.0, -1.0]), &[2.0, 1.5]);
}

#[test]
fn fedavgm_accumulates_momentum() {
    // m1 = 1, x1 = 1; m2 = 0.5 + 1 = 1.5, x2 = 2.5; m3 = 0.75 + 0.5, x3 = 3.75
    let opt = ServerOpt::FedAvgM { momentum: 0.5 };
    close(&run(opt, 1.0, 0.0, &[1.0, 1.0, 0.5]), &[1.0, 2.5, 3.75]);
}

#[test]
fn fedadam_matches_the_paper_by_hand() {
    let opt = ServerOpt::FedAdam {
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.1,
    };
    // round 1: m = 0.1 * 2 = 0.2, v = 0.01 * 4 = 0.04, step = 0.2 / (0.2 + 0.1)
    let x1 = 2.0 / 3.0;
    // round 2 (delta 2): m = 0.18 + 0.2 = 0.38, v = 0.0396 + 0.04 = 0.0796
    let x2 = x1 + 0.38 / (0.0796f64.sqrt() + 0.1);
    close(&run(opt, 1.0, 0.0, &[2.0, 2.0]), &[x1 as f32, x2 as f32]);
}

#[test]
fn fedyogi_and_fedadagrad_by_hand() {
    let yogi = ServerOpt::FedYogi {
        beta1: 0.0,
        beta2: 0.5,
        tau: 1.0,
    };
    // v0 = tau^2 = 1; delta 3: v = 1 - 0.5 * 9 * sign(1 - 9) = 5.5; step = 3 / (sqrt 5.5 + 1)
    let x1 = 3.0 / (5.5f64.sqrt() + 1.0);
    close(&run(yogi, 1.0, 0.0, &[3.0]), &[x1 as f32]);
    let adagrad = ServerOpt::FedAdagrad { tau: 1.0 };
    // v = 1 + 9 = 10, step 3 / (sqrt 10 + 1); then v = 10 + 1 = 11, step 1 / (sqrt 11 + 1)
    let a1 = 3.0 / (10f64.sqrt() + 1.0);
    let a2 = a1 + 1.0 / (11f64.sqrt() + 1.0);
    close(
        &run(adagrad, 1.0, 0.0, &[3.0, 1.0]),
        &[a1 as f32, a2 as f32],
    );
}

#[test]
fn every_optimiser_finds_the_minimum_of_a_quadratic() {
    // clients whose local step is a gradient step on (x - 3)^2 / 2
    for (opt, lr) in [
        (ServerOpt::FedAvg, 1.0),
        (ServerOpt::FEDAVGM, 0.5),
        (ServerOpt::FEDADAGRAD, 0.5),
        (ServerOpt::FEDADAM, 0.05),
        (ServerOpt::FEDYOGI, 0.05),
    ] {
        let mut x = set(&[0.0, 10.0]);
        let mut state = opt.init(&x);
        for _ in 0..500 {
            let target = set(&values(&x)
                .iter()
                .map(|v| v - 0.2 * (v - 3.0))
                .collect::<Vec<_>>());
            x = opt.step(&x, &target, &mut state, lr).unwrap();
        }
        for v in values(&x) {
            assert!((v - 3.0).abs() < 0.05, "{opt}: {v}");
        }
        assert_eq!(state.steps, 500);
    }
}

#[test]
fn a_tensor_the_round_left_alone_keeps_its_weights_and_state() {
    let opt = ServerOpt::FedAvgM { momentum: 0.9 };
    let mut base = set(&[0.0]);
    base.tensors.push(crate::params::Tensor {
        name: "head".into(),
        shape: vec![1],
        data: vec![5.0],
    });
    let mut state = opt.init(&base);
    let mut target = base.clone();
    target.tensors[0].data[0] = 1.0;
    target.tensors[1].data[0] = 6.0;
    let x1 = opt.step(&base, &target, &mut state, 1.0).unwrap();
    assert_eq!(values(&x1), [1.0, 6.0]);
    // the head is untouched next round: no momentum carries it
    let mut target = x1.clone();
    target.tensors[0].data[0] = 2.0;
    let x2 = opt.step(&x1, &target, &mut state, 1.0).unwrap();
    assert_eq!(values(&x2), [1.0 + 1.9, 6.0]);
    assert_eq!(state.m, [1.9, 1.0]);
}

#[test]
fn names_parse_back_and_bad_ones_are_explained() {
    for opt in [
        ServerOpt::FedAvg,
        ServerOpt::FEDAVGM,
        ServerOpt::FEDADAGRAD,
        ServerOpt::FEDADAM,
        ServerOpt::FEDYOGI,
    ] {
        assert_eq!(opt.to_string().parse::<ServerOpt>().unwrap(), opt);
        assert_eq!(opt.name().parse::<ServerOpt>().unwrap(), opt);
    }
    assert_eq!(
        "fedadam:tau=0.01".parse::<ServerOpt>().unwrap(),
        ServerOpt::FedAdam {
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.01
        }
    );
    for bad in [
        "fedsgd",
        "fedavgm:momentum=1",
        "fedadam:tau=0",
        "fedadam:gamma=1",
        "fedavgm:0.9",
    ] {
        assert!(bad.parse::<ServerOpt>().is_err(), "{bad}");
    }
    // a state of another optimiser starts afresh
    let x = set(&[1.0]);
    let mut state = ServerOpt::FEDADAM.init(&x);
    let _ = ServerOpt::FEDAVGM
        .step(&x, &set(&[2.0]), &mut state, 1.0)
        .unwrap();
    assert!(state.fits(&ServerOpt::FEDAVGM, &x));
    assert_eq!(OptState::from_bytes(&state.to_bytes()).unwrap(), state);
    // with a SCAFFOLD control, and as the release before stored it
    let mut with = state.clone();
    with.control = Some(crate::messages::Delta {
        codec: crate::codec::Pipeline::FP32,
        bytes: vec![1, 2, 3],
    });
    assert_eq!(OptState::from_bytes(&with.to_bytes()).unwrap(), with);
    let old = postcard::to_allocvec(&OptStateV1 {
        opt: state.opt.clone(),
        steps: state.steps,
        m: state.m.clone(),
        v: state.v.clone(),
    })
    .unwrap();
    assert_eq!(OptState::from_bytes(&old).unwrap(), state);
}

#[test]
fn schedules() {
    assert_eq!(Schedule::Constant.lr(0.5, 100), 0.5);
    let step: Schedule = "step:10:0.5".parse().unwrap();
    assert_eq!(step.lr(1.0, 9), 1.0);
    assert_eq!(step.lr(1.0, 10), 0.5);
    assert_eq!(step.lr(1.0, 25), 0.25);
    let cosine: Schedule = "cosine:10:0.1".parse().unwrap();
    assert!((cosine.lr(1.0, 0) - 1.0).abs() < 1e-12);
    assert!((cosine.lr(1.0, 5) - 0.55).abs() < 1e-12);
    assert!((cosine.lr(1.0, 10) - 0.1).abs() < 1e-12);
    assert!((cosine.lr(1.0, 99) - 0.1).abs() < 1e-12);
    for s in [Schedule::Constant, step, cosine] {
        assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
    }
    for bad in ["linear", "step:0:0.5", "step:5:2", "cosine:10:2", "cosine"] {
        assert!(bad.parse::<Schedule>().is_err(), "{bad}");
    }
}
