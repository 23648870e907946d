//! Config loading: arbitrary file contents never panic the loader; a file that loads has
//! version 1 and reloads to "unchanged".
#![no_main]

use libfuzzer_sys::fuzz_target;
use ron_kernel::Config;
use ron_kernel::config::{KernelSection, Reload};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("ron-fuzz-config-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("ron.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(config) = Config::builder().file(&path).register::<KernelSection>().build() {
        assert_eq!(config.version(), 1);
        assert!(matches!(config.reload(), Ok(Reload::Unchanged { version: 1 })));
    }
});
