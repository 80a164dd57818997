//! The aggregation maths both sides share: the streaming weighted sum of
//! updates ([`sum`]), how one update is folded into it ([`fold`]), and how a new model is published to the fleet and
//! applied by whoever holds its parent ([`publish`]).

pub mod fold;
pub mod publish;
pub mod sum;
