//! The mock backend built as a plugin that hosts load at run time
//! (`target/<profile>/libioasis_mock.so`).

ioasis::export_plugin!(ioasis_plugin_mock::root_module, ioasis_plugin_mock::ext_0_3);
