//! The spec's layout, heads, pipeline and encoding, checked on small specs.

use super::*;

/// A small valid classification spec.
pub(crate) fn spec() -> ModelSpec {
    ModelSpec {
        features: ["a", "b", "c"]
            .into_iter()
            .map(|n| Feature::numeric(n, 0.0, 1.0))
            .collect(),
        heads: vec![Head::classification("y", ["no".into(), "yes".into()])],
        hidden: vec![4],
        init_seed: 7,
    }
}

/// [`spec`] with a second, regression head on `z`.
pub(crate) fn two_heads() -> ModelSpec {
    let mut spec = spec();
    spec.heads.push(Head::regression(
        "z",
        TargetScale {
            mean: 10.0,
            std: 2.0,
        },
    ));
    spec
}

#[test]
fn heads_share_the_trunk_and_name_their_own_tensors() {
    let spec = two_heads();
    assert!(spec.validate().is_ok());
    let names: Vec<String> = spec.layout().tensors.into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias",
            "layers.2.weight",
            "layers.2.bias"
        ]
    );
    let groups: Vec<Option<usize>> = (0..6).map(|i| spec.tensor_head(i)).collect();
    assert_eq!(groups, [None, None, Some(0), Some(0), Some(1), Some(1)]);
    assert_eq!(spec.layout().numel(), 3 * 4 + 4 + (4 * 2 + 2) + (4 + 1));
    assert_eq!(spec.forward_macs(0), 3 * 4 + 4 * 2);
    assert_eq!(spec.forward_macs(1), 3 * 4 + 4);
    assert_eq!(spec.head_for("z"), Some(1));
    assert_eq!(spec.head_in(&["q".into(), "y".into()]), Some(0));
    // one head: the same layout as a plain MLP, so one-task fleets keep it
    assert_eq!(spec.tensor_head(1), None);
    let mut leaky = two_heads();
    leaky.features.push(Feature::numeric("z", 0.0, 1.0));
    assert!(leaky.validate().is_err(), "a label cannot be an input");
}

#[test]
fn init_is_deterministic_and_seeded() {
    let spec = spec();
    assert_eq!(spec.init_params(), spec.init_params());
    let other = ModelSpec {
        init_seed: 8,
        ..spec.clone()
    };
    assert_ne!(spec.init_params(), other.init_params());
    assert!(spec.validate().is_ok());
}

#[test]
fn a_model_too_large_to_hold_is_refused_before_it_is_built() {
    let mut s = spec();
    assert!(s.validate().is_ok());
    s.hidden = vec![u32::MAX];
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("parameters") && e.contains("hidden"), "{e}");
    s.hidden = vec![u32::MAX, u32::MAX, u32::MAX];
    assert!(s.validate().is_err(), "no overflow on the way to the count");
}
