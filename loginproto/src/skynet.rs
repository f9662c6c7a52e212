//! skynet crypt primitives (in progress)
