//! The VT-d backend built as a plugin that hosts load at run time
//! (`target/<profile>/libioasis_vtd.so`).

ioasis::export_plugin!(
    ioasis_plugin_vtd::root_module,
    ext_0_3 = ioasis_plugin_vtd::ext_0_3,
    ext_0_4 = ioasis_plugin_vtd::ext_0_4,
);
