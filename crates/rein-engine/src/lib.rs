//! The rein run loop: drives a model and tools through the durable event log, resumes after crashes, and benchmarks itself.
