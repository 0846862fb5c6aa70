/* The physical floor of a migration: a 64-byte TCP round trip on loopback with TCP_NODELAY,
 * ping-pong between two processes, timed the way ctdb_ring.c times its calls.
 * Build: gcc -O2 loopback_rtt.c -o loopback_rtt      Use: loopback_rtt SECONDS */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static double now(void) { struct timeval tv; gettimeofday(&tv, NULL); return tv.tv_sec + tv.tv_usec / 1e6; }
static int io(int fd, char *b, size_t n, int rd) {
	size_t d = 0;
	while (d < n) { ssize_t r = rd ? read(fd, b + d, n - d) : write(fd, b + d, n - d); if (r <= 0) return -1; d += r; }
	return 0;
}
static int cmpd(const void *x, const void *y) { double d = *(const double *)x - *(const double *)y; return d < 0 ? -1 : d > 0; }

int main(int argc, char **argv) {
	double secs = argc > 1 ? atof(argv[1]) : 2;
	int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof a;
	if (bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &al)) { perror("listen"); return 1; }
	pid_t echo = fork();
	if (echo == 0) {
		int s = accept(l, NULL, NULL);
		char b[64];
		setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		while (io(s, b, sizeof b, 1) == 0 && io(s, b, sizeof b, 0) == 0) {}
		_exit(0);
	}
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(s, (void *)&a, sizeof a)) { perror("connect"); return 1; }
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	size_t cap = 1 << 23, cnt = 0;
	double *lat = malloc(cap * sizeof(double)), t0 = now(), t_end = t0 + secs;
	char b[64] = {7};
	while (now() < t_end && cnt < cap) {
		double t = now();
		if (io(s, b, sizeof b, 0) || io(s, b, sizeof b, 1)) { perror("ping"); return 1; }
		lat[cnt++] = now() - t;
	}
	double dt = now() - t0;
	close(s);
	waitpid(echo, NULL, 0);
	qsort(lat, cnt, sizeof(double), cmpd);
	printf("loopback TCP 64B round trip: %.0f /s, p50 %.1f us, p99 %.1f us\n", cnt / dt, lat[cnt / 2] * 1e6,
	       lat[cnt * 99 / 100] * 1e6);
	return 0;
}
