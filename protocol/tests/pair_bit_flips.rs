mod common;
use common::*;
#[test]
fn timing() {
    let t = std::time::Instant::now();
    for _ in 0..20 {
        let _p = Pair::established();
    }
    eprintln!("20 established pairs: {:?}", t.elapsed());
    let peers = Peers::default_configs();
    let t = std::time::Instant::now();
    for _ in 0..20 {
        let mut p = Pair::start(&peers);
        let r = p.take_one_from_client();
        p.deliver_to_server(&r).unwrap();
    }
    eprintln!("20 server record1: {:?}", t.elapsed());
}
