//! Tools over the rules that run no gateway: fixtures (`shouwang-gateway rules test`) and
//! replays of recorded readings (`rules replay`).

pub mod fixture;
pub mod replay;
