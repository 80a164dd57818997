//! The aggregation maths both sides share: the streaming weighted sum of
//! updates ([`sum`]), how one update is folded into it ([`fold`]), the
//! rules a few dishonest vehicles cannot steer and the weights and norm
//! bounds every rule applies ([`robust`]), and how a new model is published
//! to the fleet and applied by whoever holds its parent ([`publish`]).

pub mod fold;
pub mod publish;
pub mod robust;
pub mod sum;
