// Package network gives VMs their host-side network: tap devices and addresses via
// netlink, NAT and egress filters via nftables, and IP/port leases.
package network
