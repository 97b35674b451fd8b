//! `cim-export`: ONNX export of trained enhancers and edge inference through tract.
//!
//! The ONNX writer and the tract runner arrive with the export issue; the crate is a
//! member of the workspace now so that its place in the dependency graph is fixed.
