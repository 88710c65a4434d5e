package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// resolver is the DNS server guests use. It listens on the gateway address
// (IP_FREEBIND: before any tap holds it) on a port of its own; each VM's
// nat rule redirects the guest's port 53 there. It identifies the VM by the
// source address (anti-spoofing in the VM's pre chain makes that sound),
// answers only names the VM's policy allows, and for allowlist VMs adds the
// A records to the VM's dns set — timeout max(TTL, MinTTL) — before replying,
// so the guest can connect the moment it has the answer.
type resolver struct {
	m         *Manager
	port      int
	upstreams []string
	udp, tcp  *dns.Server
}

const upstreamTimeout = 3 * time.Second

func startResolver(ctx context.Context, m *Manager, upstreams []string) (*resolver, error) {
	r := &resolver{m: m, upstreams: upstreams}
	if len(upstreams) == 0 {
		m.log.Warn("resolver has no upstream servers: allowed queries will fail")
	}
	pc, ln, err := r.listen(ctx)
	if err != nil {
		return nil, fmt.Errorf("start resolver: %w", err)
	}
	r.port = pc.LocalAddr().(*net.UDPAddr).Port
	r.udp = &dns.Server{PacketConn: pc, Handler: r}
	r.tcp = &dns.Server{Listener: ln, Handler: r}
	for _, s := range []*dns.Server{r.udp, r.tcp} {
		go func() {
			if err := s.ActivateAndServe(); err != nil {
				m.log.Warn("resolver stopped", "err", err)
			}
		}()
	}
	m.log.Debug("resolver listening", "addr", pc.LocalAddr(), "upstreams", upstreams)
	return r, nil
}

// listen binds UDP and TCP on the same free port of the gateway address.
func (r *resolver) listen(ctx context.Context) (net.PacketConn, net.Listener, error) {
	lc := net.ListenConfig{Control: freebind}
	gw := r.m.pool.Gateway.String()
	var errs []error
	for range 5 {
		var pc net.PacketConn
		var ln net.Listener
		err := r.m.ns.do(func() error {
			var err error
			if pc, err = lc.ListenPacket(ctx, "udp4", net.JoinHostPort(gw, "0")); err != nil {
				return err
			}
			port := strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
			if ln, err = lc.Listen(ctx, "tcp4", net.JoinHostPort(gw, port)); err != nil {
				pc.Close()
			}
			return err
		})
		if err == nil {
			return pc, ln, nil
		}
		errs = append(errs, err)
	}
	return nil, nil, errors.Join(errs...)
}

func freebind(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
	})
	return errors.Join(err, serr)
}

func (r *resolver) close() error {
	return errors.Join(r.udp.Shutdown(), r.tcp.Shutdown())
}

// ServeDNS implements dns.Handler.
func (r *resolver) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := r.answer(w.RemoteAddr(), req)
	if err := w.WriteMsg(resp); err != nil {
		r.m.log.Debug("resolver write", "err", err)
	}
}

func (r *resolver) answer(from net.Addr, req *dns.Msg) *dns.Msg {
	src := addrOf(from)
	id, policy, gen, ok := r.m.policyOf(src)
	if !ok || len(req.Question) != 1 {
		return reply(req, dns.RcodeRefused)
	}
	q := req.Question[0]
	log := r.m.log.With("vm", id, "name", q.Name, "type", dns.TypeToString[q.Qtype])
	if !policy.AllowsName(q.Name) {
		log.Debug("dns refused by policy")
		return reply(req, dns.RcodeRefused)
	}
	ctx, cancel := context.WithTimeout(context.Background(), upstreamTimeout)
	defer cancel()
	resp, err := r.forward(ctx, req)
	if err != nil {
		log.Warn("dns upstream", "err", err)
		return reply(req, dns.RcodeServerFailure)
	}
	if policy.Mode == EgressAllowlist {
		if elems := r.setElements(resp); len(elems) > 0 {
			if err := r.m.allowAddrs(id, gen, elems); err != nil {
				log.Warn("dns allow addresses", "err", err)
				return reply(req, dns.RcodeServerFailure)
			}
		}
	}
	return resp
}

// setElements turns the A records of an answer into set elements.
func (r *resolver) setElements(resp *dns.Msg) []nftables.SetElement {
	var elems []nftables.SetElement
	for _, rr := range resp.Answer {
		a, ok := rr.(*dns.A)
		if !ok || a.A.To4() == nil {
			continue
		}
		ttl := max(time.Duration(a.Hdr.Ttl)*time.Second, r.m.cfg.MinTTL)
		elems = append(elems, nftables.SetElement{Key: []byte(a.A.To4()), Timeout: ttl})
	}
	return elems
}

// forward asks each upstream in turn, over UDP and then TCP if truncated.
func (r *resolver) forward(ctx context.Context, req *dns.Msg) (*dns.Msg, error) {
	var errs []error
	for _, up := range r.upstreams {
		resp, err := r.exchange(ctx, "udp", up, req)
		if err == nil && resp.Truncated {
			resp, err = r.exchange(ctx, "tcp", up, req)
		}
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
	}
	if len(errs) == 0 {
		return nil, errors.New("no upstream servers")
	}
	return nil, errors.Join(errs...)
}

func (r *resolver) exchange(ctx context.Context, network, server string, req *dns.Msg) (*dns.Msg, error) {
	c, err := r.m.ns.dial(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	co := &dns.Conn{Conn: c}
	if err := co.WriteMsg(req); err != nil {
		return nil, err
	}
	resp, err := co.ReadMsg()
	if err != nil {
		return nil, err
	}
	if resp.Id != req.Id {
		return nil, errors.New("reply id mismatch")
	}
	return resp, nil
}

func reply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	return m
}

func addrOf(a net.Addr) netip.Addr {
	var ip net.IP
	switch v := a.(type) {
	case *net.UDPAddr:
		ip = v.IP
	case *net.TCPAddr:
		ip = v.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

// readResolvConf returns the nameservers of a resolv.conf as host:53.
func readResolvConf(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read upstream resolvers: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				out = append(out, netip.AddrPortFrom(a.WithZone(""), 53).String())
			}
		}
	}
	return out, sc.Err()
}
