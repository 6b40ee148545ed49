//! The mock backend built as a plugin that hosts load at run time
//! (`target/<profile>/libioasis_mock.so`).

ioasis::export_plugin!(
    ioasis_plugin_mock::root_module,
    ext_0_3 = ioasis_plugin_mock::ext_0_3,
    ext_0_4 = ioasis_plugin_mock::ext_0_4,
);
