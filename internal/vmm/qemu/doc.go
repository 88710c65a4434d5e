// Package qemu launches and controls QEMU microVMs (microvm machine, KVM or TCG),
// with a QMP client for control and a virtio-serial port for the agent.
package qemu
