//! The VT-d backend built as a plugin that hosts load at run time
//! (`target/<profile>/libioasis_vtd.so`).

ioasis::export_plugin!(ioasis_plugin_vtd::root_module, ioasis_plugin_vtd::ext_0_3);
