//! The Intel VT-d backend: a driver that programs VT-d remapping units (legacy and scalable
//! mode), and a model of the hardware that reads what it writes.

pub mod layout;
