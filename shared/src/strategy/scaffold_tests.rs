use super::*;
use crate::codec::Pipeline;

fn v(values: &[f32]) -> ParamSet {
    ParamSet::vector(values)
}

/// Clients `fᵢ(w) = ½ hᵢ (w − aᵢ)²` per coordinate, K local SGD steps
/// each, full participation, equal weights: FedAvg settles away from the
/// optimum `Σ hᵢ aᵢ / Σ hᵢ` (client drift); SCAFFOLD reaches it.
fn run(scaffold: bool) -> f32 {
    let (h, a) = ([1.0f32, 8.0, 3.0], [4.0f32, -2.0, 1.0]);
    let (k, lr) = (20u64, 0.05f32);
    let mut w = v(&[0.0]);
    let mut c = v(&[0.0]);
    let mut own = vec![v(&[0.0]); 3];
    for _ in 0..300 {
        let mut mean = 0.0f32;
        let mut sum = ControlSum::new(w.layout());
        for i in 0..3 {
            let corr = if scaffold {
                correction(&c, &own[i], |_| true).unwrap().tensors[0].data[0]
            } else {
                0.0
            };
            let mut y = w.tensors[0].data[0];
            for _ in 0..k {
                y -= lr * (h[i] * (y - a[i]) + corr);
            }
            let sent = v(&[y - w.tensors[0].data[0]]);
            mean += sent.tensors[0].data[0] / 3.0;
            own[i] = client_step(&own[i], &c, &sent, k, lr, |_| true).unwrap();
            sum.fold(&sent, 0, k, lr, 1.0);
        }
        w.tensors[0].data[0] += mean;
        c = sum.step(&c, 1.0);
    }
    w.tensors[0].data[0]
}

#[test]
fn scaffold_reaches_the_optimum_fedavg_drifts_from() {
    let optimum = (4.0 - 16.0 + 3.0) / 12.0; // Σ hᵢ aᵢ / Σ hᵢ
    let fedavg = run(false);
    let scaffold = run(true);
    assert!(
        (fedavg - optimum).abs() > 0.1,
        "FedAvg {fedavg} should drift from {optimum}"
    );
    assert!(
        (scaffold - optimum).abs() < 1e-4,
        "SCAFFOLD {scaffold} should reach {optimum}"
    );
}

#[test]
fn the_server_control_is_the_mean_of_the_vehicles_after_full_participation() {
    let c = v(&[1.0, 1.0]);
    let mut sum = ControlSum::new(c.layout());
    let (a, b) = (v(&[-2.0, 0.0]), v(&[0.0, -4.0]));
    sum.fold(&a, 0, 2, 0.5, 1.0);
    sum.fold(&b, 0, 2, 0.5, 1.0);
    assert_eq!(sum.updates(), 2);
    // Δyᵢ/(Kη) = a, b; full participation: c⁺ = −mean = [1, 2]
    assert_eq!(sum.step(&c, 1.0).tensors[0].data, vec![1.0, 2.0]);
    // half the fleet reported: c⁺ = ½c − ½·mean = [1, 1.5]
    assert_eq!(sum.step(&c, 0.5).tensors[0].data, vec![1.0, 1.5]);
    // each vehicle's own step from zeros: cᵢ⁺ = −c − Δyᵢ/(Kη)
    let own = client_step(&v(&[0.0, 0.0]), &c, &a, 2, 0.5, |_| true).unwrap();
    assert_eq!(own.tensors[0].data, vec![1.0, -1.0]);
    // nothing reported: the control stays
    let empty = ControlSum::new(c.layout());
    assert_eq!(empty.step(&c, 1.0), c);
}

#[test]
fn tensors_a_vehicle_does_not_train_keep_their_controls() {
    let mut c = v(&[2.0]);
    c.tensors.push(crate::params::Tensor {
        name: "head".into(),
        shape: vec![1],
        data: vec![3.0],
    });
    let own = ParamSet::zeros(&c.layout());
    let corr = correction(&c, &own, |i| i == 0).unwrap();
    assert_eq!(corr.values().collect::<Vec<_>>(), vec![2.0, 0.0]);
    let sent = ParamSet::zeros(&c.layout());
    let next = client_step(&own, &c, &sent, 1, 1.0, |i| i == 0).unwrap();
    assert_eq!(next.values().collect::<Vec<_>>(), vec![-2.0, 0.0]);
    let wrong = v(&[1.0]);
    assert!(client_step(&own, &c, &wrong, 1, 1.0, |_| true).is_err());
}

#[test]
fn a_published_control_is_fetched_by_its_id_only() {
    let spec = crate::spec::ModelSpec {
        features: vec![crate::spec::Feature::numeric("x", 0.0, 1.0)],
        heads: vec![crate::spec::Head::classification(
            "y",
            ["a".to_string(), "b".to_string()],
        )],
        hidden: vec![],
        init_seed: 1,
    };
    let codec = control_codec("topk:0.1+q8+zstd".parse::<Pipeline>().unwrap());
    assert_eq!(codec.to_string(), "q8+zstd");
    let mut c = ParamSet::zeros(&spec.layout());
    c.values_mut()
        .enumerate()
        .for_each(|(i, x)| *x = i as f32 - 1.0);
    let control = Control::publish(&c, codec);
    let payload = control.payload();
    let got = receive(&payload, &control.id(), &spec).unwrap();
    assert_eq!(got, control.values);
    // every value survives: the sparsifier is not applied to a control
    assert!(
        got.values()
            .zip(c.values())
            .all(|(a, b)| (a - b).abs() < 0.02)
    );
    assert!(receive(&payload, &[0; 32], &spec).is_none());
    let mut bad = payload.clone();
    bad.truncate(bad.len() / 2);
    assert!(receive(&bad, &payload_id(&bad), &spec).is_none());
    let back = Control::from_published(control.published.clone(), &spec).unwrap();
    assert_eq!(back, control);
    assert_eq!(
        Control::zeros(&spec, codec).values,
        ParamSet::zeros(&spec.layout())
    );
}
