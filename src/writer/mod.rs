//! A small writer of Spack-format mirrors (v3 signed or unsigned, and v2), used by
//! `spackfs demo`, the benchmarks and the tests that need hostile mirrors.
