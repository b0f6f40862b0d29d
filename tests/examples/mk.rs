fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let today = time::OffsetDateTime::now_utc().date();
    let nodes = spoc_node::testnet::generate(&out, 2, today, &mut rand::rng()).unwrap();
    println!("{}", serde_json::to_string(&nodes).unwrap());
}
