//! Browser entry point (built by trunk with `--features csr`): mounts the app.

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::ui::App);
}
