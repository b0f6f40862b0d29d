//! What the fuzz targets share: one seeded test network, built once.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use rand::SeedableRng;
use spoc_node::charter::Charter;
use spoc_node::identity::SecretKey;

/// The fixed time of every fuzz run: 2026-12-01, inside the fixture's first term.
pub const NOW_MS: u64 = 1_796_083_200_000;

/// A charter with IE (the Presidency), LT, EL and the observer EUROPOL, and their keys.
pub fn fixture() -> &'static (Arc<Charter>, BTreeMap<String, SecretKey>) {
    static FIXTURE: OnceLock<(Arc<Charter>, BTreeMap<String, SecretKey>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0xf022);
        let today = time::Date::from_calendar_date(2026, time::Month::December, 1)
            .unwrap_or(time::Date::MIN);
        let (charter, keys) =
            spoc_node::testnet::fixture(&["IE", "LT", "EL", "EUROPOL"], &["IE", "LT"], today, &mut rng)
                .unwrap_or_else(|e| panic!("fixture: {e}"));
        (Arc::new(charter), keys)
    })
}
