//! The propagation baseline: raw libp2p gossipsub, N swarms in this process on loopback
//! (TCP, Noise, Yamux, signed messages, strict validation, no application checks), every
//! swarm connected to every other, publishing only once each has seen every other one
//! subscribe.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, noise, tcp, yamux};
use tokio::sync::mpsc;

/// How long any one step of the baseline may take before it fails.
const STEP: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Cmd {
    Dial(Multiaddr),
    Publish(Vec<u8>),
}

#[derive(Debug)]
enum Ev {
    Listening(Multiaddr),
    Subscribed(PeerId),
    Delivered(u64, Instant),
    Failed(String),
}

fn swarm(topic: &gossipsub::IdentTopic) -> Result<Swarm<gossipsub::Behaviour>> {
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    // The same envelope as the node's: anonymous messages named by their content.
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .max_transmit_size(65 * 1024)
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::new(blake3::hash(&message.data).as_bytes())
        })
        .build()
        .map_err(|e| anyhow!("gossipsub config: {e}"))?;
    let mut behaviour =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
            .map_err(|e| anyhow!("gossipsub: {e}"))?;
    behaviour.subscribe(topic)?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    Ok(swarm)
}

async fn drive(
    index: usize,
    mut swarm: Swarm<gossipsub::Behaviour>,
    topic: gossipsub::IdentTopic,
    mut commands: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<(usize, Ev)>,
) {
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Cmd::Dial(address)) => {
                    if let Err(e) = swarm.dial(address) {
                        let _ = events.send((index, Ev::Failed(e.to_string()))).await;
                    }
                }
                Some(Cmd::Publish(data)) => {
                    if let Err(e) = swarm.behaviour_mut().publish(topic.clone(), data) {
                        let _ = events.send((index, Ev::Failed(e.to_string()))).await;
                    }
                }
                None => break,
            },
            event = swarm.select_next_some() => {
                let ev = match event {
                    SwarmEvent::NewListenAddr { address, .. } => Ev::Listening(address),
                    SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, .. }) => {
                        Ev::Subscribed(peer_id)
                    }
                    SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) => {
                        let at = Instant::now();
                        let mut id = [0u8; 8];
                        id.copy_from_slice(&message.data[..8.min(message.data.len())]);
                        Ev::Delivered(u64::from_le_bytes(id), at)
                    }
                    _ => continue,
                };
                if events.send((index, ev)).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn next(events: &mut mpsc::Receiver<(usize, Ev)>) -> Result<(usize, Ev)> {
    match tokio::time::timeout(STEP, events.recv()).await {
        Ok(Some((_, Ev::Failed(e)))) => bail!("gossipsub baseline: {e}"),
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("gossipsub baseline: every swarm stopped"),
        Err(_) => bail!("gossipsub baseline: nothing happened for {STEP:?}"),
    }
}

/// Publishes `messages` messages of `size` bytes, each from the next swarm in turn, and
/// returns for each the time until every other swarm had it.
pub fn deliveries(n: usize, size: usize, messages: usize) -> Result<Vec<Duration>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let topic = gossipsub::IdentTopic::new("bench/entries/1");
        let (event_tx, mut events) = mpsc::channel(65_536);
        let mut commands = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let (tx, rx) = mpsc::channel(64);
            tasks.spawn(drive(
                i,
                swarm(&topic)?,
                topic.clone(),
                rx,
                event_tx.clone(),
            ));
            commands.push(tx);
        }
        drop(event_tx);
        let mut addresses: Vec<Option<Multiaddr>> = vec![None; n];
        while addresses.iter().any(Option::is_none) {
            if let (i, Ev::Listening(a)) = next(&mut events).await? {
                addresses[i].get_or_insert(a);
            }
        }
        // Every swarm dials every swarm before it: one connection per pair, a full mesh.
        for (i, tx) in commands.iter().enumerate() {
            for a in addresses[..i].iter().flatten() {
                tx.send(Cmd::Dial(a.clone())).await?;
            }
        }
        let mut subscribed: Vec<HashSet<PeerId>> = vec![HashSet::new(); n];
        while subscribed.iter().any(|s| s.len() < n - 1) {
            if let (i, Ev::Subscribed(peer)) = next(&mut events).await? {
                subscribed[i].insert(peer);
            }
        }
        let mut latencies = Vec::with_capacity(messages);
        for k in 0..messages {
            let mut data = vec![0x5a_u8; size.max(8)];
            data[..8].copy_from_slice(&(k as u64).to_le_bytes());
            let origin = k % n;
            let start = Instant::now();
            commands[origin].send(Cmd::Publish(data)).await?;
            let mut got = HashSet::new();
            let mut last = start;
            while got.len() < n - 1 {
                if let (i, Ev::Delivered(id, at)) = next(&mut events).await?
                    && id == k as u64
                    && i != origin
                    && got.insert(i)
                {
                    last = last.max(at);
                }
            }
            latencies.push(last - start);
        }
        drop(commands);
        while tasks.join_next().await.is_some() {}
        Ok(latencies)
    })
}
