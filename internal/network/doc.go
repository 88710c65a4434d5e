// Package network gives VMs their host-side network: tap devices and addresses via
// netlink, NAT and egress filters via nftables, and IP/port leases.
//
// # Design
//
// Routed /32 per tap, no bridge. Each VM gets a tap (TapName) holding the
// gateway address (.1 of the pool, the same /32 on every tap) and a /32
// route to the guest's address; the guest has a /32 and a default route via
// the gateway (see GuestCmdline). VMs share no L2 segment, so there is no
// ARP/MAC spoofing between them and every VM-to-VM packet is routed through
// the host's forward hook where nftables sees it; a bridge would need
// br_netfilter or ebtables to filter the same traffic.
//
// One nftables table, "inet smolvm", owned by smolvm alone. Its seven base
// chains only dispatch (rules matching one tap, commented "smolvm:<vm>");
// each VM has its own regular chains (vm-<id>-pre/out/egress/in/host) and
// sets (vm-<id>-cidr, interval; vm-<id>-dns, timeout). So one VM's state is
// created in one atomic batch, replaced without touching others, deleted by
// name, and found again from the kernel alone by Teardown or Sweep. The
// forward hook has two base chains (from-VM, then to-VM) because an accept
// ends only its own base chain.
//
// Filtering: a VM may not spoof its source or speak IPv6; it may not open
// connections to other VMs (unless both have AllowVMs) nor to the host's
// addresses except the resolver (unless AllowHost); its egress follows its
// Policy; traffic is masqueraded out of the default-route interface.
//
// Domains: the guest's DNS (gateway:53) is redirected to a resolver in the
// Manager's process, on the gateway address and a port of its own (so
// several Managers can coexist). It answers only names the VM's policy
// allows, forwards them upstream (/etc/resolv.conf), and for allowlist VMs
// adds the A records to the VM's dns set, timeout max(TTL, MinTTL), before
// replying; all else gets REFUSED. Direct-IP traffic to addresses not in
// the sets is dropped. Limits, honestly: an address let in for one name
// serves every name hosted on it (shared CDNs, virtual hosts) until it
// times out; answers through CNAMEs are trusted; a name's addresses that
// the guest learns elsewhere (hard-coded, DoH to an allowed host) work if
// and only if they are in the set; established connections outlive policy
// changes and set timeouts (conntrack); re-adding an element refreshes its
// timeout only on kernels that support timeout updates (6.10+ here).
//
// Rate limits: host-to-guest is shaped by a tbf qdisc on the tap;
// guest-to-host is policed by an nftables limit in the VM's pre chain
// (excess dropped: TCP adapts, bursts suffer). This kernel has no act_police,
// and an ifb per VM would double the links. Firecracker has its own token
// buckets (vmm.NetIf RxRateBps/TxRateBps), which shape both ways in the VMM;
// with Firecracker prefer those and leave RateMbps 0.
//
// Port exposure: a userspace proxy on 127.0.0.1 (DNAT cannot reach loopback
// traffic without route_localnet, which we will not turn on host-wide) and
// nftables DNAT for other addresses, from other hosts (never from a VM tap)
// and from this host. In user mode QEMU forwards (HostFwdAdd).
//
// Performance: per VM, Setup is one tap creation and five netlink calls
// plus one nftables batch (~3 ms); Teardown one nftables batch (~1 ms, on
// the Manager's kept socket; see nftSession) and one link deletion, run side
// by side. The link deletion is the floor: the kernel's netdev_run_todo
// waits in rcu_barrier for a full RCU grace period (15-19 ms here) for any
// device unregistration, and closing a non-persistent tap's last fd costs
// the same. See BenchmarkSetupTeardown and BenchmarkTeardownSteps.
package network
