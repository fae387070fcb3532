//! Browser entry point of the app (built by trunk from index.html with `--features csr`).

fn main() {
    app::start(app::ui::App);
}
