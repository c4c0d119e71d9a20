//! The status file `clipd status` reads.
