/*
 * Network ops of a VM-mode guest: the NIC QEMU gave the VM (a virtio-net
 * device wearing the container interface's MAC) goes into the container's
 * network namespace and takes the name, MTU, addresses and routes the host
 * read from the client's namespace (src/vm/network.ts computes every value).
 *
 * All of it is rtnetlink (RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE), one
 * request per op, each acknowledged (NLM_F_ACK) so the kernel's errno is the
 * op's. The only lookup here is "which link has this MAC": the guest kernel
 * names its NICs in probe order, the MAC is what the host chose.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "nk-exec.h"

/* ------------------------------------------------------------- rtnetlink */

struct nl_request {
	union {
		struct nlmsghdr hdr;
		char align[NLMSG_HDRLEN];
	};
	char data[1024];
};

/* Start a request of `type` with its fixed-size body (ifinfomsg, ...). */
static void nl_begin(struct nl_request *req, unsigned type, unsigned flags, const void *body, size_t len)
{
	memset(req, 0, sizeof *req);
	req->hdr.nlmsg_type = (unsigned short)type;
	req->hdr.nlmsg_flags = (unsigned short)(NLM_F_REQUEST | NLM_F_ACK | flags);
	req->hdr.nlmsg_seq = 1;
	req->hdr.nlmsg_len = (unsigned)NLMSG_LENGTH(len);
	memcpy(NLMSG_DATA(&req->hdr), body, len);
}

static int nl_attr(struct nl_request *req, unsigned type, const void *value, size_t len)
{
	size_t at = NLMSG_ALIGN(req->hdr.nlmsg_len);
	size_t size = RTA_LENGTH(len);
	if (at + RTA_ALIGN(size) > sizeof *req)
		return failx(EMSGSIZE, "netlink request too large");
	struct rtattr *rta = (struct rtattr *)((char *)req + at);
	rta->rta_type = (unsigned short)type;
	rta->rta_len = (unsigned short)size;
	memcpy(RTA_DATA(rta), value, len);
	req->hdr.nlmsg_len = (unsigned)(at + RTA_ALIGN(size));
	return 0;
}

static int nl_attr_u32(struct nl_request *req, unsigned type, uint32_t value)
{
	return nl_attr(req, type, &value, sizeof value);
}

/* Send the request and read its acknowledgement; returns 0 or -errno. */
static int nl_talk(struct nl_request *req)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -errno;
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	int result = -EPROTO;
	if (sendto(fd, req, req->hdr.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
		result = -errno;
		goto out;
	}
	for (;;) {
		char buf[4096] __attribute__((aligned(NLMSG_ALIGNTO)));
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			result = -errno;
			goto out;
		}
		int len = (int)n;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = NLMSG_DATA(h);
				result = e->error; /* 0: the acknowledgement */
				goto out;
			}
		}
	}
out:
	close(fd);
	return result;
}

/* ------------------------------------------------------------------ links */

static int parse_mac(const char *text, unsigned char mac[6])
{
	char end;
	return sscanf(text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx%c", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4], &mac[5],
		      &end) == 6
		       ? 0
		       : -1;
}

/* The index of the Ethernet link whose hardware address is mac, or 0. */
static unsigned link_with_mac(const unsigned char mac[6])
{
	struct if_nameindex *links = if_nameindex();
	unsigned found = 0;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	for (struct if_nameindex *l = links; fd >= 0 && l && l->if_index && !found; l++) {
		struct ifreq ifr;
		memset(&ifr, 0, sizeof ifr);
		snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", l->if_name);
		if (ioctl(fd, SIOCGIFHWADDR, &ifr) == 0 && ifr.ifr_hwaddr.sa_family == ARPHRD_ETHER &&
		    memcmp(ifr.ifr_hwaddr.sa_data, mac, 6) == 0)
			found = l->if_index;
	}
	if (fd >= 0)
		close(fd);
	if (links)
		if_freenameindex(links);
	return found;
}

static int find_link(const char *mac_text, unsigned wait_ms, unsigned *index)
{
	unsigned char mac[6];
	if (parse_mac(mac_text, mac) < 0)
		return failx(EINVAL, "\"%s\" is not a MAC address", mac_text);
	/* A NIC whose driver is still probing appears a moment later. */
	for (unsigned waited = 0;; waited += 5) {
		*index = link_with_mac(mac);
		if (*index)
			return 0;
		if (waited >= wait_ms)
			return failx(ENODEV, "no network interface with MAC %s (after %u ms)", mac_text, wait_ms);
		struct timespec t = {0, 5 * 1000 * 1000};
		nanosleep(&t, NULL);
	}
}

/* NET_LINK_NETNS(mac, waitMs): move the NIC into init's network namespace. */
int op_net_link_netns(const struct op *op)
{
	unsigned index;
	if (find_link(op->arg[0], (unsigned)op->num[1], &index) < 0)
		return -1;
	struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = (int)index};
	struct nl_request req;
	nl_begin(&req, RTM_NEWLINK, 0, &ifi, sizeof ifi);
	if (nl_attr_u32(&req, IFLA_NET_NS_PID, (uint32_t)nk.child) < 0)
		return -1;
	int r = nl_talk(&req);
	if (r < 0)
		return fail(-r, "move network interface %s (index %u) into the network namespace of pid %d", op->arg[0],
			    index, (int)nk.child);
	set_detail("index %u -> pid %d", index, (int)nk.child);
	return 0;
}

/* NET_LINK_SET(mac, name, mtu): rename it (it is down after the move) and set its MTU (0: keep). */
int op_net_link_set(const struct op *op)
{
	unsigned index;
	if (find_link(op->arg[0], 0, &index) < 0)
		return -1;
	struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = (int)index};
	struct nl_request req;
	nl_begin(&req, RTM_NEWLINK, 0, &ifi, sizeof ifi);
	if (op->len[1] == 0 || op->len[1] >= IFNAMSIZ)
		return failx(EINVAL, "bad interface name \"%s\"", op->arg[1]);
	if (nl_attr(&req, IFLA_IFNAME, op->arg[1], op->len[1] + 1) < 0)
		return -1;
	if (op->num[2] && nl_attr_u32(&req, IFLA_MTU, (uint32_t)op->num[2]) < 0)
		return -1;
	int r = nl_talk(&req);
	if (r < 0)
		return fail(-r, "name network interface %s \"%s\" with MTU %u", op->arg[0], op->arg[1],
			    (unsigned)op->num[2]);
	return 0;
}

/* NET_LINK_UP(name) */
int op_net_link_up(const struct op *op)
{
	unsigned index = if_nametoindex(op->arg[0]);
	if (!index)
		return fail(errno, "find network interface %s", op->arg[0]);
	struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = (int)index, .ifi_flags = IFF_UP, .ifi_change = IFF_UP};
	struct nl_request req;
	nl_begin(&req, RTM_NEWLINK, 0, &ifi, sizeof ifi);
	int r = nl_talk(&req);
	if (r < 0)
		return fail(-r, "bring network interface %s up", op->arg[0]);
	return 0;
}

/* ---------------------------------------------------- addresses and routes */

/* "" -> 0 (absent); else the address's bytes for family 4 or 6. */
static int parse_ip(unsigned family, const char *text, unsigned char out[16], size_t *len)
{
	*len = 0;
	if (!*text)
		return 0;
	int af = family == 6 ? AF_INET6 : AF_INET;
	if (inet_pton(af, text, out) != 1)
		return failx(EINVAL, "\"%s\" is not an IPv%u address", text, family);
	*len = af == AF_INET6 ? 16 : 4;
	return 0;
}

static int family_of(const struct op *op, unsigned arg, unsigned char *af)
{
	if (op->num[arg] != 4 && op->num[arg] != 6)
		return failx(EINVAL, "address family %llu is neither 4 nor 6", (unsigned long long)op->num[arg]);
	*af = op->num[arg] == 6 ? AF_INET6 : AF_INET;
	return 0;
}

/* NET_ADDR_ADD(name, family, address, prefixLen, broadcast, flags, scope) */
int op_net_addr_add(const struct op *op)
{
	unsigned char af = AF_INET, addr[16], brd[16];
	size_t addr_len, brd_len;
	unsigned family = (unsigned)op->num[1];
	if (family_of(op, 1, &af) < 0 || parse_ip(family, op->arg[2], addr, &addr_len) < 0 ||
	    parse_ip(family, op->arg[4], brd, &brd_len) < 0)
		return -1;
	if (!addr_len || op->num[3] > addr_len * 8 || op->num[6] > 255)
		return failx(EINVAL, "bad address %s/%llu", op->arg[2], (unsigned long long)op->num[3]);
	unsigned index = if_nametoindex(op->arg[0]);
	if (!index)
		return fail(errno, "find network interface %s", op->arg[0]);
	struct ifaddrmsg ifa = {
		.ifa_family = af,
		.ifa_prefixlen = (unsigned char)op->num[3],
		.ifa_flags = (unsigned char)(op->num[5] & 0xff),
		.ifa_scope = (unsigned char)op->num[6],
		.ifa_index = index,
	};
	struct nl_request req;
	nl_begin(&req, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifa, sizeof ifa);
	if (nl_attr(&req, IFA_LOCAL, addr, addr_len) < 0 || nl_attr(&req, IFA_ADDRESS, addr, addr_len) < 0 ||
	    (brd_len && nl_attr(&req, IFA_BROADCAST, brd, brd_len) < 0) ||
	    nl_attr_u32(&req, IFA_FLAGS, (uint32_t)op->num[5]) < 0)
		return -1;
	int r = nl_talk(&req);
	if (r < 0)
		return fail(-r, "add address %s/%u to %s", op->arg[2], (unsigned)op->num[3], op->arg[0]);
	return 0;
}

/* NET_ROUTE_ADD(name, family, dst, dstLen, gateway, source, metric, scope, onlink) */
int op_net_route_add(const struct op *op)
{
	unsigned char af = AF_INET, dst[16], gw[16], src[16];
	size_t dst_len, gw_len, src_len;
	unsigned family = (unsigned)op->num[1];
	if (family_of(op, 1, &af) < 0 || parse_ip(family, op->arg[2], dst, &dst_len) < 0 ||
	    parse_ip(family, op->arg[4], gw, &gw_len) < 0 || parse_ip(family, op->arg[5], src, &src_len) < 0)
		return -1;
	if (op->num[3] > (af == AF_INET6 ? 128u : 32u) || (op->num[3] && !dst_len) || op->num[7] > 255)
		return failx(EINVAL, "bad route destination \"%s\"/%llu", op->arg[2], (unsigned long long)op->num[3]);
	unsigned index = if_nametoindex(op->arg[0]);
	if (!index)
		return fail(errno, "find network interface %s", op->arg[0]);
	struct rtmsg rtm = {
		.rtm_family = af,
		.rtm_dst_len = (unsigned char)op->num[3],
		.rtm_table = RT_TABLE_MAIN,
		.rtm_protocol = RTPROT_BOOT,
		.rtm_scope = (unsigned char)op->num[7],
		.rtm_type = RTN_UNICAST,
		.rtm_flags = op->num[8] ? RTNH_F_ONLINK : 0,
	};
	struct nl_request req;
	nl_begin(&req, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rtm, sizeof rtm);
	if ((dst_len && nl_attr(&req, RTA_DST, dst, dst_len) < 0) || (gw_len && nl_attr(&req, RTA_GATEWAY, gw, gw_len) < 0) ||
	    (src_len && nl_attr(&req, RTA_PREFSRC, src, src_len) < 0) || nl_attr_u32(&req, RTA_OIF, index) < 0 ||
	    (op->num[6] && nl_attr_u32(&req, RTA_PRIORITY, (uint32_t)op->num[6]) < 0))
		return -1;
	int r = nl_talk(&req);
	if (r < 0)
		return fail(-r, "add route %s/%u%s%s dev %s", *op->arg[2] ? op->arg[2] : "default", (unsigned)op->num[3],
			    gw_len ? " via " : "", op->arg[4], op->arg[0]);
	return 0;
}
