//! placeholder until the embedded backend lands.
