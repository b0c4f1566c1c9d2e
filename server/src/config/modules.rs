//! `[modules]`: which feature modules run and their options, with MongooseIM's
//! module and option names. No `[modules]` table: every module with its defaults,
//! in-band registration off (`starling_modules::Config::all`). A `[modules]` table:
//! exactly the modules listed there, as in MongooseIM.

use std::time::Duration;

use serde::Deserialize;

use starling_shard::guard::Fail2Ban;

use super::{invalid, ConfigError, Registration};

/// The raw `[modules]` table.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Modules {
    mod_roster: Option<ModRoster>,
    mod_mam: Option<ModMam>,
    mod_offline: Option<ModOffline>,
    mod_carbons: Option<Empty>,
    mod_blocking: Option<Empty>,
    mod_pep: Option<Empty>,
    mod_vcard: Option<Empty>,
    mod_private: Option<Empty>,
    mod_last: Option<Empty>,
    mod_csi: Option<ModCsi>,
    mod_disco: Option<Empty>,
    mod_ping: Option<Empty>,
    mod_version: Option<ModVersion>,
    mod_register: Option<ModRegister>,
    mod_fail2ban: Option<ModFail2Ban>,
    mod_stream_management: Option<ModStreamManagement>,
    mod_bosh: Option<ModBosh>,
    mod_sasl2: Option<Empty>,
    mod_bind2: Option<Empty>,
    mod_fast_auth_token: Option<ModFastAuthToken>,
}

/// MongooseIM's mod_fast_auth_token: `validity_period.access = {value, unit}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModFastAuthToken {
    #[serde(default)]
    validity_period: Option<ValidityPeriod>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidityPeriod {
    access: Option<Period>,
    rotate_before_expire: Option<Period>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Period {
    value: u64,
    unit: String,
}

impl Period {
    fn duration(&self, key: &str) -> Result<Duration, ConfigError> {
        let seconds = match self.unit.as_str() {
            "days" => 86_400,
            "hours" => 3_600,
            "minutes" => 60,
            "seconds" => 1,
            other => return Err(invalid(key, format!("unknown unit {other:?} (days, hours, minutes, seconds)"))),
        };
        match self.value.checked_mul(seconds) {
            Some(0) | None => Err(invalid(key, "must be positive")),
            Some(total) => Ok(Duration::from_secs(total)),
        }
    }
}

/// MongooseIM's mod_stream_management options.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModStreamManagement {
    /// Unacknowledged stanzas a session may have (MongooseIM: 100).
    #[serde(default)]
    buffer_max: Option<usize>,
    /// Stanzas between the server's ack requests (MongooseIM: 1).
    #[serde(default)]
    ack_freq: Option<u32>,
    /// Seconds a lost session waits to be resumed; 0: resumption off (MongooseIM: 600).
    #[serde(default)]
    resume_timeout: Option<u64>,
}

/// MongooseIM's mod_bosh options, in seconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModBosh {
    /// A session without requests for this long ends (MongooseIM: 30).
    #[serde(default)]
    inactivity: Option<u32>,
    /// The longest a request is held (MongooseIM: no limit; here 60 by default).
    #[serde(default)]
    max_wait: Option<u32>,
    /// The longest pause a client may ask for (MongooseIM: 120).
    #[serde(default)]
    max_pause: Option<u32>,
}

/// ejabberd's mod_fail2ban, with its option names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModFail2Ban {
    /// Seconds an address stays banned, and the window failures are counted in.
    #[serde(default = "default_ban_lifetime")]
    c2s_auth_ban_lifetime: u64,
    /// Failed authentications within the window that ban the address.
    #[serde(default = "default_max_auth_failures")]
    c2s_max_auth_failures: u32,
}

fn default_ban_lifetime() -> u64 {
    3600
}
fn default_max_auth_failures() -> u32 {
    20
}

/// The throttle every config without a `[modules]` table runs (ejabberd's defaults).
pub(super) fn default_fail2ban() -> Fail2Ban {
    Fail2Ban {
        max_auth_failures: default_max_auth_failures(),
        ban_lifetime: Duration::from_secs(default_ban_lifetime()),
    }
}

/// A module without options (an empty table switches it on).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModRoster {
    /// XEP-0237 roster versioning (default true).
    #[serde(default = "yes")]
    versioning: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModMam {
    #[serde(default)]
    default_result_limit: Option<usize>,
    #[serde(default)]
    max_result_limit: Option<usize>,
    #[serde(default)]
    async_writer: Option<AsyncWriter>,
    /// Messages one archive keeps; past it the oldest are purged (0: no limit).
    #[serde(default)]
    max_user_archived_messages: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AsyncWriter {
    /// Milliseconds a row waits at most before it is written.
    #[serde(default)]
    flush_interval: Option<u64>,
    /// Rows per write transaction.
    #[serde(default)]
    batch_size: Option<usize>,
    /// Rows waiting per core above which senders wait (Starling's addition).
    #[serde(default)]
    queue_max: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModOffline {
    /// Messages stored per account (MongooseIM's `max_user_offline_messages` rule).
    #[serde(default)]
    max_user_offline_messages: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModCsi {
    #[serde(default)]
    buffer_max: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModVersion {
    #[serde(default)]
    os_info: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModRegister {
    /// Seconds between two registrations from one IP address (MongooseIM's name).
    #[serde(default = "default_registration_timeout")]
    registration_timeout: u64,
}

fn yes() -> bool {
    true
}

fn default_registration_timeout() -> u64 {
    600
}

/// Converts `[modules]` (`None`: the table is absent) into the modules' config and the
/// in-band registration settings.
/// What `[modules]` switches on: the feature modules, in-band registration, and the
/// authentication throttle.
type Converted = (starling_modules::Config, Option<Registration>, Option<Fail2Ban>);

pub(super) fn convert(raw: Option<Modules>) -> Result<Converted, ConfigError> {
    let Some(raw) = raw else { return Ok((starling_modules::Config::all(), None, Some(default_fail2ban()))) };
    let fail2ban = match raw.mod_fail2ban {
        None => None,
        Some(f) => {
            if f.c2s_auth_ban_lifetime == 0 || f.c2s_max_auth_failures == 0 {
                return Err(invalid(
                    "modules.mod_fail2ban",
                    "c2s_auth_ban_lifetime and c2s_max_auth_failures must be positive",
                ));
            }
            Some(Fail2Ban {
                max_auth_failures: f.c2s_max_auth_failures,
                ban_lifetime: Duration::from_secs(f.c2s_auth_ban_lifetime),
            })
        }
    };
    let defaults = starling_modules::Config::all();
    let registration = raw.mod_register.map(|r| Registration { interval: Duration::from_secs(r.registration_timeout) });
    let positive = |key: &str, value: Option<usize>, default: usize| -> Result<usize, ConfigError> {
        match value {
            None => Ok(default),
            Some(0) => Err(invalid(key, "must be positive")),
            Some(value) => Ok(value),
        }
    };
    let mam = match raw.mod_mam {
        None => None,
        Some(mam) => {
            let base = starling_modules::MamConfig::default();
            let writer =
                mam.async_writer.unwrap_or(AsyncWriter { flush_interval: None, batch_size: None, queue_max: None });
            let config = starling_modules::MamConfig {
                default_result_limit: positive(
                    "modules.mod_mam.default_result_limit",
                    mam.default_result_limit,
                    base.default_result_limit,
                )?,
                max_result_limit: positive(
                    "modules.mod_mam.max_result_limit",
                    mam.max_result_limit,
                    base.max_result_limit,
                )?,
                flush_interval: writer.flush_interval.map_or(base.flush_interval, Duration::from_millis),
                batch_size: positive("modules.mod_mam.async_writer.batch_size", writer.batch_size, base.batch_size)?,
                queue_max: positive("modules.mod_mam.async_writer.queue_max", writer.queue_max, base.queue_max)?,
                max_user_archived_messages: mam.max_user_archived_messages.unwrap_or(base.max_user_archived_messages),
            };
            if config.queue_max < config.batch_size {
                return Err(invalid("modules.mod_mam.async_writer.queue_max", "must be at least batch_size"));
            }
            Some(config)
        }
    };
    let offline = match raw.mod_offline {
        None => None,
        Some(offline) => Some(starling_modules::OfflineConfig {
            max_user_offline_messages: positive(
                "modules.mod_offline.max_user_offline_messages",
                offline.max_user_offline_messages,
                1000,
            )?,
        }),
    };
    let csi = match raw.mod_csi {
        None => None,
        Some(csi) => Some(starling_modules::CsiConfig {
            buffer_max: positive(
                "modules.mod_csi.buffer_max",
                csi.buffer_max,
                defaults.csi.map_or(500, |c| c.buffer_max),
            )?,
        }),
    };
    let config = starling_modules::Config {
        roster: raw.mod_roster.map(|r| starling_modules::RosterConfig { versioning: r.versioning }),
        mam,
        offline,
        carbons: raw.mod_carbons.is_some(),
        blocking: raw.mod_blocking.is_some(),
        pep: raw.mod_pep.is_some(),
        vcard: raw.mod_vcard.is_some(),
        private: raw.mod_private.is_some(),
        last: raw.mod_last.is_some(),
        csi,
        disco: raw.mod_disco.is_some(),
        ping: raw.mod_ping.is_some(),
        version: raw.mod_version.map(|v| starling_modules::VersionConfig { os_info: v.os_info }),
        register: registration.is_some(),
        fast_auth_token: match raw.mod_fast_auth_token {
            None => None,
            Some(fast) => {
                let (access, rotate) = match fast.validity_period {
                    None => (None, None),
                    Some(period) => (period.access, period.rotate_before_expire),
                };
                let key = "modules.mod_fast_auth_token.validity_period";
                let access = match access {
                    None => starling_modules::FAST_TOKEN_VALIDITY,
                    Some(period) => period.duration(&format!("{key}.access"))?,
                };
                let rotate = match rotate {
                    None => starling_modules::FAST_TOKEN_ROTATE_BEFORE.min(access),
                    Some(period) => period.duration(&format!("{key}.rotate_before_expire"))?,
                };
                Some((access, rotate))
            }
        },
        sasl2: raw.mod_sasl2.is_some(),
        bind2: raw.mod_bind2.is_some(),
        bosh: {
            let defaults = starling_shard::settings::BoshSettings::default();
            match raw.mod_bosh {
                None => defaults,
                Some(bosh) => starling_shard::settings::BoshSettings {
                    inactivity: match bosh.inactivity {
                        Some(0) => return Err(invalid("modules.mod_bosh.inactivity", "must be positive")),
                        value => value.unwrap_or(defaults.inactivity),
                    },
                    max_wait: match bosh.max_wait {
                        Some(0) => return Err(invalid("modules.mod_bosh.max_wait", "must be positive")),
                        value => value.unwrap_or(defaults.max_wait),
                    },
                    max_pause: bosh.max_pause.unwrap_or(defaults.max_pause),
                },
            }
        },
        stream_management: match raw.mod_stream_management {
            None => None,
            Some(sm) => {
                let defaults = starling_modules::STREAM_MANAGEMENT_DEFAULTS;
                let ack_freq = sm.ack_freq.unwrap_or(defaults.ack_freq);
                if ack_freq == 0 {
                    return Err(invalid("modules.mod_stream_management.ack_freq", "must be at least 1"));
                }
                Some(starling_shard::resume::StreamManagement {
                    buffer_max: positive(
                        "modules.mod_stream_management.buffer_max",
                        sm.buffer_max,
                        defaults.buffer_max,
                    )?,
                    ack_freq,
                    resume_timeout: sm.resume_timeout.map_or(defaults.resume_timeout, Duration::from_secs),
                })
            }
        },
    };
    Ok((config, registration, fail2ban))
}
