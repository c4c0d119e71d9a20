//! systemd's readiness and watchdog protocol (sd_notify).
