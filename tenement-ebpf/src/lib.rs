#![no_std]
// The programs live in the `tenement` binary target (src/main.rs); this library exists so
// that `tenement`'s build script can depend on this package and rebuild when it changes.
