//! libpcap live capture on devices (spec 6.2), one handle per device, each a non-blocking
//! [`Capture`]. Stand-in until tc-core's `capture::pcap_live` (branch intercept) is merged.

use std::io;
use std::os::fd::AsRawFd;

use tc_core::capture::Capture;
use tc_core::packet::LinkType;

pub struct PcapDeviceCapture {
    device: String,
    handle: pcap::Capture<pcap::Active>,
    link: LinkType,
    truncated: u64,
}

impl PcapDeviceCapture {
    pub fn open(
        device: &str,
        filter: &str,
        snaplen: u32,
        buffer_bytes: u32,
    ) -> anyhow::Result<PcapDeviceCapture> {
        let handle = pcap::Capture::from_device(device)?
            .snaplen(snaplen as i32)
            .promisc(true)
            .timeout(10)
            .buffer_size(buffer_bytes as i32)
            .immediate_mode(true)
            .open()
            .map_err(|e| anyhow::anyhow!("pcap open,device:{device}: {e}"))?;
        let mut handle = handle
            .setnonblock()
            .map_err(|e| anyhow::anyhow!("{device}: non-blocking: {e}"))?;
        handle
            .filter(filter, true)
            .map_err(|e| anyhow::anyhow!("{device}: filter \"{filter}\": {e}"))?;
        let dlt = handle.get_datalink().0;
        let Some(link) = LinkType::from_dlt(dlt) else {
            anyhow::bail!("{device}: unsupported DLT type {dlt}");
        };
        Ok(PcapDeviceCapture {
            device: device.to_string(),
            handle,
            link,
            truncated: 0,
        })
    }

    /// Opens every named device, or every device but `any` when `devices` is empty. Devices
    /// that fail are logged; none working is an error.
    pub fn open_all(
        devices: &[String],
        filter: &str,
        snaplen: u32,
        buffer_bytes: u32,
    ) -> anyhow::Result<Vec<PcapDeviceCapture>> {
        let names: Vec<String> = if devices.is_empty() {
            pcap::Device::list()?
                .into_iter()
                .map(|d| d.name)
                .filter(|n| n != "any")
                .collect()
        } else {
            devices.to_vec()
        };
        let mut opened = Vec::new();
        for name in &names {
            match PcapDeviceCapture::open(name, filter, snaplen, buffer_bytes) {
                Ok(c) => {
                    log::info!("pcap open,device:{name}");
                    opened.push(c);
                }
                Err(e) => log::warn!("device could not work:{name}: {e:#}"),
            }
        }
        if opened.is_empty() {
            anyhow::bail!("no device available for snooping packets (tried {names:?})");
        }
        Ok(opened)
    }

    pub fn device(&self) -> &str {
        &self.device
    }
}

impl Capture for PcapDeviceCapture {
    fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<()> {
        let fd = self.handle.as_raw_fd();
        registry.register(
            &mut mio::unix::SourceFd(&fd),
            token,
            mio::Interest::READABLE,
        )
    }

    fn read_frames(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(LinkType, &[u8]),
    ) -> io::Result<usize> {
        let mut count = 0;
        while count < budget {
            match self.handle.next_packet() {
                Ok(packet) => {
                    count += 1;
                    // A snaplen shorter than the frame: the datagram is incomplete.
                    if packet.header.caplen < packet.header.len {
                        self.truncated += 1;
                        continue;
                    }
                    on_frame(self.link, packet.data);
                }
                Err(pcap::Error::TimeoutExpired) | Err(pcap::Error::NoMorePackets) => break,
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        Ok(count)
    }

    fn dropped(&self) -> u64 {
        self.truncated
    }
}
