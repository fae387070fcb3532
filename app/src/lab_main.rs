//! The transport lab's entry point (built by trunk from lab.html into dist/lab/).

fn main() {
    app::start(app::lab::Lab);
}
