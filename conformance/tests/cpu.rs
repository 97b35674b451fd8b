//! The conformance suite on the fast CPU backend.
cim_conformance::backend_suite!(cim_cpu::Cpu::new());
