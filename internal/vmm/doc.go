// Package vmm defines the Backend interface that every virtual machine monitor
// implements (QEMU, Firecracker), and the Spec that describes one VM to launch.
package vmm
