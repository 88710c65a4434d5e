// Package agentproto defines the wire protocol shared by the host and the guest agent:
// one yamux session over the agent channel, one framed request per stream.
package agentproto
