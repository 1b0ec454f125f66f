//! `wasmesh proxy -l LEVEL` sets the log level as Envoy's `-l` does, without `RUST_LOG`:
//! plugins ask for it (`proxy_get_log_level`) and the SDKs drop lines below it, so
//! `-l debug` shows a plugin's debug lines and `-l warning` hides its info lines.

use crate::compile::one_request;

/// The `logging` plugin's `request headers: /` lines at each level, with `-l level`.
async fn plugin_lines(level: &str) -> Vec<String> {
    let module = test_plugins::path(test_plugins::LOGGING);
    let (_, log) = one_request(&module, &["-l", level], None).await;
    let levels = ["TRACE", "DEBUG", " INFO", " WARN", "ERROR"];
    log.lines()
        .filter(|l| l.contains("request headers: /") && !l.contains("stdout:"))
        .filter_map(|l| levels.iter().find(|lv| l.contains(*lv)))
        .map(|lv| lv.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_flag_sets_what_plugins_log() {
    // critical is logged as an error line
    assert_eq!(plugin_lines("warning").await, ["WARN", "ERROR", "ERROR"]);
    assert_eq!(
        plugin_lines("debug").await,
        ["DEBUG", "INFO", "WARN", "ERROR", "ERROR"]
    );
}
