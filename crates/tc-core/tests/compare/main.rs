//! Tests of the response comparison core (issue 19), in one binary: `cases` with
//! real-looking nginx and Redis responses and the pairer step by step, `props` with property
//! tests; `fixtures` builds encoded bodies for both.

mod cases;
mod fixtures;
mod props;
