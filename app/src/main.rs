//! Browser entry point (built by trunk with `--features csr`): mounts the app.

fn main() {
    console_error_panic_hook::set_once();
    // index.html shows a static "loading" state until the app runs; replace it.
    if let Some(boot) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("boot"))
    {
        boot.remove();
    }
    leptos::mount::mount_to_body(app::ui::App);
}
