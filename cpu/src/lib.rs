//! `cim-cpu`: the fast CPU backend of `cim`.
