//! Tools over the rules that run no gateway: fixtures (`shouwang-gateway rules test`).

pub mod fixture;
