//! The aggregation maths both sides share: the streaming weighted sum of
//! updates ([`sum`]), how one update is folded into it ([`fold`]), the
//! rules a few dishonest vehicles cannot steer and the weights and norm
//! bounds every rule applies ([`robust`]), the server's optimiser on the
//! round's aggregate ([`server`]), SCAFFOLD's control variates
//! ([`scaffold`]), and how a new model is published to the
//! fleet and applied by whoever holds its parent ([`publish`]).

/// `TryFrom<String>` through `FromStr` and `From<T> for String` through
/// `Display`: what `#[serde(try_from = "String", into = "String")]` needs,
/// so a setting is written in config files as the text it parses from.
#[macro_export]
macro_rules! text_setting {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.to_string()
            }
        }
    };
}

pub mod fold;
pub mod publish;
pub mod robust;
pub mod scaffold;
pub mod server;
pub mod sum;

use crate::messages::Objective;
use robust::Rule;
use server::ServerOpt;

/// A round's whole strategy as a version's provenance records it: the
/// server optimiser, the vehicles' objective, the rule and the learning
/// rate the round ran at, e.g. `fedadam:beta1=0.9,beta2=0.99,tau=0.001+cosine:0:lr=0.01`
/// or `fedprox:mu=0.01+fedavg:lr=1`. Plain FedAvg with the plain objective
/// writes the rule alone (`cosine:0:lr=1`), as versions always have.
pub fn describe(opt: &ServerOpt, objective: &Objective, rule: &Rule, lr: f64) -> String {
    let mut parts = Vec::new();
    if opt.is_stateful() {
        parts.push(opt.to_string());
    }
    match objective {
        Objective::Prox { mu } => parts.push(format!("fedprox:mu={mu}")),
        Objective::Scaffold { .. } => parts.push("scaffold".into()),
        Objective::Plain => {}
    }
    parts.push(rule.strategy(lr));
    parts.join("+")
}

/// The server optimiser a provenance's strategy string names (FedAvg when
/// it names none).
pub fn server_opt_of(strategy: &str) -> ServerOpt {
    strategy
        .split('+')
        .find_map(|part| {
            part.parse::<ServerOpt>()
                .ok()
                .filter(ServerOpt::is_stateful)
        })
        .unwrap_or(ServerOpt::FedAvg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_strings_name_their_parts_and_parse_back() {
        let rule = Rule::Cosine { floor: 0.0 };
        let plain = describe(&ServerOpt::FedAvg, &Objective::Plain, &rule, 1.0);
        assert_eq!(plain, "cosine:0:lr=1");
        assert_eq!(server_opt_of(&plain), ServerOpt::FedAvg);
        let adam = describe(
            &ServerOpt::FEDADAM,
            &Objective::Prox { mu: 0.01 },
            &Rule::Median,
            0.01,
        );
        assert_eq!(
            adam,
            "fedadam:beta1=0.9,beta2=0.99,tau=0.001+fedprox:mu=0.01+median:lr=0.01"
        );
        assert_eq!(server_opt_of(&adam), ServerOpt::FEDADAM);
        assert_eq!(Rule::of_strategy(&adam), Some(Rule::Median));
        let scaffold = describe(
            &ServerOpt::FedAvg,
            &Objective::Scaffold { control: [7; 32] },
            &rule,
            1.0,
        );
        assert_eq!(scaffold, "scaffold+cosine:0:lr=1");
        assert_eq!(server_opt_of(&scaffold), ServerOpt::FedAvg);
    }
}
