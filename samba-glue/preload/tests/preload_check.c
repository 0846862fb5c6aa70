/*
 * preload_check: a tdb program (linked with the real libtdb) run with the preload in front
 * of it. It opens DIR/locking.tdb (routed, if RCTDB_SAMBA_DBS keeps its default) and
 * DIR/plain.tdb (not routed), and checks what a Samba process relies on:
 *
 *   preload_check DIR calls    every call on both kinds of database
 *   preload_check DIR fork     children after fork: tdb_reopen_all, and a child that
 *                              skips it; parent and children increment one counter
 *                              under the chain lock at the same time
 *   preload_check DIR store K V / fetch K     one record of the routed database
 *   preload_check DIR dump NAME                every record of DIR/NAME, as hex:
 *                              "key HEX data HEX" (through the preload when NAME is routed)
 *   preload_check - headers FILE               a clustered node file read directly:
 *                              "key HEX dmaster N rsn N bytes N" (rctdb's record header)
 *
 * Prints one "ok: ..." line per check; the first failure prints "FAIL: ..." and exits 1.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <tdb.h>
#include <unistd.h>

static const char *dir;

static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stdout, "FAIL [%d]: ", (int)getpid());
	vfprintf(stdout, fmt, ap);
	fprintf(stdout, "\n");
	va_end(ap);
	fflush(stdout);
	exit(1);
}

static void ok(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stdout, "ok: ");
	vfprintf(stdout, fmt, ap);
	fprintf(stdout, "\n");
	va_end(ap);
	fflush(stdout);
}

static TDB_DATA text(const char *s)
{
	return (TDB_DATA){ (unsigned char *)s, strlen(s) };
}

static int log_lines;

static void count_log(struct tdb_context *tdb, enum tdb_debug_level level, const char *fmt, ...)
{
	(void)tdb;
	(void)level;
	(void)fmt;
	log_lines++;
}

static struct tdb_context *open_db(const char *name, int flags)
{
	char path[4096];
	struct tdb_logging_context log = { count_log, NULL };
	struct tdb_context *tdb;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	tdb = tdb_open_ex(path, 0, flags, O_RDWR | O_CREAT, 0644, &log, NULL);
	if (tdb == NULL) {
		fail("tdb_open_ex(%s): %s", path, strerror(errno));
	}
	return tdb;
}

/* The same value under key, or fail. */
static void expect(struct tdb_context *tdb, const char *key, const char *want)
{
	TDB_DATA got = tdb_fetch(tdb, text(key));

	if (want == NULL) {
		if (got.dptr != NULL || tdb_error(tdb) != TDB_ERR_NOEXIST) {
			fail("%s: %s: expected no record, error %d (%s)", tdb_name(tdb), key,
			     tdb_error(tdb), tdb_errorstr(tdb));
		}
		return;
	}
	if (got.dptr == NULL || got.dsize != strlen(want) || memcmp(got.dptr, want, got.dsize) != 0) {
		fail("%s: %s: expected %s, got %.*s (%s)", tdb_name(tdb), key, want, (int)got.dsize,
		     got.dptr != NULL ? (char *)got.dptr : "", tdb_errorstr(tdb));
	}
	free(got.dptr);
}

static int parsed_len;

static int parse_len(TDB_DATA key, TDB_DATA data, void *private_data)
{
	(void)key;
	(void)private_data;
	parsed_len = (int)data.dsize;
	return 7;
}

static int count_record(struct tdb_context *tdb, TDB_DATA key, TDB_DATA data, void *private_data)
{
	(void)key;
	(void)data;
	if (tdb != private_data) {
		fail("the traverse callback got %p, not the handle %p", (void *)tdb, private_data);
	}
	return 0;
}

static int check_ok(TDB_DATA key, TDB_DATA data, void *private_data)
{
	(void)key;
	(void)data;
	(*(int *)private_data)++;
	return 0;
}

static void check_records(struct tdb_context *tdb)
{
	TDB_DATA parts[2] = { text("ab"), text("cd") };
	const char *name = tdb_name(tdb);
	int n, seen;

	if (tdb_store(tdb, text("k1"), text("v1"), TDB_INSERT) != 0) {
		fail("%s: store: %s", name, tdb_errorstr(tdb));
	}
	expect(tdb, "k1", "v1");
	if (tdb_store(tdb, text("k1"), text("v2"), TDB_INSERT) == 0 || tdb_error(tdb) != TDB_ERR_EXISTS) {
		fail("%s: TDB_INSERT over a record: want TDB_ERR_EXISTS, got %d", name, tdb_error(tdb));
	}
	if (tdb_storev(tdb, text("k2"), parts, 2, TDB_REPLACE) != 0) {
		fail("%s: storev: %s", name, tdb_errorstr(tdb));
	}
	expect(tdb, "k2", "abcd");
	if (tdb_append(tdb, text("k2"), text("ef")) != 0 || tdb_append(tdb, text("k3"), text("x")) != 0) {
		fail("%s: append: %s", name, tdb_errorstr(tdb));
	}
	expect(tdb, "k2", "abcdef");
	expect(tdb, "k3", "x");
	if (tdb_parse_record(tdb, text("k2"), parse_len, NULL) != 7 || parsed_len != 6) {
		fail("%s: parse_record", name);
	}
	if (tdb_parse_record(tdb, text("none"), parse_len, NULL) != -1 ||
	    tdb_error(tdb) != TDB_ERR_NOEXIST) {
		fail("%s: parse_record of a missing key: want -1/TDB_ERR_NOEXIST", name);
	}
	if (tdb_exists(tdb, text("k1")) != 1 || tdb_exists(tdb, text("none")) != 0) {
		fail("%s: exists", name);
	}
	if (tdb_chainlock(tdb, text("k1")) != 0 || tdb_store(tdb, text("k1"), text("v3"), 0) != 0 ||
	    tdb_chainunlock(tdb, text("k1")) != 0) {
		fail("%s: store under chainlock: %s", name, tdb_errorstr(tdb));
	}
	if (tdb_chainlock_read(tdb, text("k1")) != 0 || tdb_chainunlock_read(tdb, text("k1")) != 0) {
		fail("%s: chainlock_read: %s", name, tdb_errorstr(tdb));
	}
	expect(tdb, "k1", "v3");
	if (tdb_delete(tdb, text("k3")) != 0) {
		fail("%s: delete: %s", name, tdb_errorstr(tdb));
	}
	expect(tdb, "k3", NULL);
	if (tdb_delete(tdb, text("k3")) != -1 || tdb_error(tdb) != TDB_ERR_NOEXIST) {
		fail("%s: delete of a missing key: want -1/TDB_ERR_NOEXIST", name);
	}
	if ((n = tdb_traverse(tdb, count_record, tdb)) != 2 || tdb_traverse_read(tdb, NULL, NULL) != 2) {
		fail("%s: traverse counted %d records, want 2", name, n);
	}
	seen = 0;
	for (TDB_DATA k = tdb_firstkey(tdb); k.dptr != NULL;) {
		TDB_DATA next = tdb_nextkey(tdb, k);
		free(k.dptr);
		k = next;
		if (++seen > 10) {
			fail("%s: firstkey/nextkey does not end", name);
		}
	}
	if (seen != 2) {
		fail("%s: firstkey/nextkey saw %d keys, want 2", name, seen);
	}
	seen = 0;
	if (tdb_check(tdb, check_ok, &seen) != 0 || seen != 2) {
		fail("%s: check saw %d records, want 2", name, seen);
	}
	if (tdb_wipe_all(tdb) != 0 || tdb_traverse(tdb, NULL, NULL) != 0) {
		fail("%s: wipe_all: %s", name, tdb_errorstr(tdb));
	}
	ok("%s: store/insert/storev/append/fetch/parse/exists/chainlock/delete/traverse/"
	   "firstkey/nextkey/check/wipe_all", name);
}

static void check_calls(void)
{
	struct tdb_context *routed = open_db("locking.tdb", TDB_CLEAR_IF_FIRST | TDB_MUTEX_LOCKING |
								TDB_INCOMPATIBLE_HASH | TDB_SEQNUM);
	struct tdb_context *plain = open_db("plain.tdb", TDB_CLEAR_IF_FIRST);
	struct stat st;
	char *summary;

	check_records(plain);
	check_records(routed);

	if (fstat(tdb_fd(routed), &st) != 0 || fstat(tdb_fd(plain), &st) != 0) {
		fail("fstat(tdb_fd()): %s", strerror(errno));
	}
	ok("tdb_fd of both can be fstat'ed (dbwrap's database id)");
	if ((tdb_get_flags(routed) & TDB_MUTEX_LOCKING) != 0 || (tdb_get_flags(routed) & TDB_SEQNUM) == 0) {
		fail("routed flags %#x: want TDB_MUTEX_LOCKING dropped, TDB_SEQNUM kept",
		     tdb_get_flags(routed));
	}
	ok("routed tdb_get_flags %#x: TDB_MUTEX_LOCKING dropped", tdb_get_flags(routed));
	if (tdb_get_seqnum(routed) <= 0) {
		fail("routed seqnum %d after changes, want > 0", tdb_get_seqnum(routed));
	}
	ok("routed seqnum %d", tdb_get_seqnum(routed));

	/* Calls with no rctdb equivalent fail cleanly, with tdb's code and a reason. */
	log_lines = 0;
	if (tdb_transaction_start(routed) != -1 || tdb_error(routed) != TDB_ERR_EINVAL ||
	    strstr(tdb_errorstr(routed), "tdb_transaction_start") == NULL) {
		fail("transaction_start on a routed db: want -1/TDB_ERR_EINVAL, got %s",
		     tdb_errorstr(routed));
	}
	ok("routed tdb_transaction_start: -1, TDB_ERR_EINVAL, \"%s\"", tdb_errorstr(routed));
	if (tdb_lockall(routed) != -1 || tdb_chainlock_mark(routed, text("k")) != -1 ||
	    tdb_traverse_chain(routed, 0, NULL, NULL) != -1 || log_lines != 4) {
		fail("lockall/chainlock_mark/traverse_chain on a routed db: want -1 and a log line "
		     "each (%d lines)", log_lines);
	}
	ok("routed lockall/chainlock_mark/traverse_chain: -1, one log line each through the "
	   "caller's log function");
	/* The error of a later rctdb call wins over the preload's own. */
	tdb_fetch(routed, text("absent"));
	if (tdb_error(routed) != TDB_ERR_NOEXIST) {
		fail("a fetch after an unsupported call: error %d, want TDB_ERR_NOEXIST",
		     tdb_error(routed));
	}
	/* The plain database is libtdb's: transactions work. */
	if (tdb_transaction_start(plain) != 0 || tdb_store(plain, text("t"), text("1"), 0) != 0 ||
	    tdb_transaction_commit(plain) != 0) {
		fail("transaction on the plain db: %s", tdb_errorstr(plain));
	}
	ok("plain db transaction (libtdb's own)");
	summary = tdb_summary(routed);
	if (summary == NULL || strstr(summary, "routed to rctdb") == NULL) {
		fail("tdb_summary of the routed db: %s", summary != NULL ? summary : "NULL");
	}
	free(summary);
	if (tdb_reopen(routed) != 0 || tdb_reopen(plain) != 0) {
		fail("tdb_reopen: %s / %s", tdb_errorstr(routed), tdb_errorstr(plain));
	}
	if (tdb_close(routed) != 0 || tdb_close(plain) != 0) {
		fail("tdb_close");
	}
	ok("tdb_summary, tdb_reopen, tdb_close");
}

/* n increments of "counter", each a read-modify-write under the chain lock. */
static void increment(struct tdb_context *tdb, int n)
{
	for (int i = 0; i < n; i++) {
		TDB_DATA key = text("counter");
		TDB_DATA old;
		char buf[32];
		long value = 0;

		if (tdb_chainlock(tdb, key) != 0) {
			fail("chainlock: %s", tdb_errorstr(tdb));
		}
		old = tdb_fetch(tdb, key);
		if (old.dptr != NULL) {
			value = strtol((char *)old.dptr, NULL, 10);
			free(old.dptr);
		}
		snprintf(buf, sizeof(buf), "%ld", value + 1);
		/* The NUL goes in too, so strtol stops there. */
		if (tdb_store(tdb, key, (TDB_DATA){ (unsigned char *)buf, strlen(buf) + 1 }, 0) != 0) {
			fail("store: %s", tdb_errorstr(tdb));
		}
		if (tdb_chainunlock(tdb, key) != 0) {
			fail("chainunlock: %s", tdb_errorstr(tdb));
		}
	}
}

static void check_fork(void)
{
	const int rounds = 300;
	struct tdb_context *routed = open_db("locking.tdb", TDB_CLEAR_IF_FIRST | TDB_INCOMPATIBLE_HASH);
	pid_t children[2];
	TDB_DATA total;

	if (tdb_store(routed, text("from parent"), text("p"), 0) != 0) {
		fail("parent store: %s", tdb_errorstr(routed));
	}
	tdb_delete(routed, text("counter"));
	for (int c = 0; c < 2; c++) {
		children[c] = fork();
		if (children[c] < 0) {
			fail("fork: %s", strerror(errno));
		}
		if (children[c] == 0) {
			/* Child 0 does what smbd's children do; child 1 just goes on. */
			if (c == 0 && tdb_reopen_all(1) != 0) {
				fail("child tdb_reopen_all: %s", tdb_errorstr(routed));
			}
			expect(routed, "from parent", "p");
			increment(routed, rounds);
			if (tdb_store(routed, text(c == 0 ? "from child 0" : "from child 1"), text("c"), 0) != 0) {
				fail("child store: %s", tdb_errorstr(routed));
			}
			exit(0);
		}
	}
	increment(routed, rounds);
	for (int c = 0; c < 2; c++) {
		int status;

		if (waitpid(children[c], &status, 0) != children[c] || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0) {
			fail("child %d failed", c);
		}
	}
	expect(routed, "from child 0", "c");
	expect(routed, "from child 1", "c");
	total = tdb_fetch(routed, text("counter"));
	if (total.dptr == NULL || strtol((char *)total.dptr, NULL, 10) != 3 * rounds) {
		fail("counter %s after 3 x %d increments", total.dptr != NULL ? (char *)total.dptr : "-",
		     rounds);
	}
	ok("fork: parent and 2 children (one with tdb_reopen_all, one without) incremented one "
	   "counter under the chain lock at once: %s = 3 x %d; each saw the others' records",
	   (char *)total.dptr, rounds);
	free(total.dptr);
	tdb_close(routed);
}

static void print_hex(const char *label, TDB_DATA d)
{
	printf("%s ", label);
	for (size_t i = 0; i < d.dsize; i++) {
		printf("%02x", d.dptr[i]);
	}
}

static int print_record(struct tdb_context *tdb, TDB_DATA key, TDB_DATA data, void *private_data)
{
	(void)tdb;
	(void)private_data;
	print_hex("key", key);
	print_hex(" data", data);
	printf("\n");
	return 0;
}

/* rctdb's 24-byte record header: rsn (u64), dmaster (u32), flags (u32), little-endian. */
static int print_header(struct tdb_context *tdb, TDB_DATA key, TDB_DATA data, void *private_data)
{
	unsigned long long rsn = 0;
	unsigned dmaster = 0;

	(void)tdb;
	(void)private_data;
	if (data.dsize < 24) {
		return 0;
	}
	memcpy(&rsn, data.dptr, 8);
	memcpy(&dmaster, data.dptr + 8, 4);
	print_hex("key", key);
	printf(" dmaster %u rsn %llu bytes %zu\n", dmaster, rsn, data.dsize - 24);
	return 0;
}

static int dump(const char *path, tdb_traverse_func fn)
{
	struct tdb_context *tdb = tdb_open(path, 0, 0, O_RDONLY, 0);

	if (tdb == NULL) {
		fail("tdb_open(%s): %s", path, strerror(errno));
	}
	if (tdb_traverse_read(tdb, fn, NULL) < 0) {
		fail("traverse %s: %s", path, tdb_errorstr(tdb));
	}
	tdb_close(tdb);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s DIR calls|fork|store KEY VALUE|fetch KEY\n", argv[0]);
		return 2;
	}
	dir = argv[1];
	if (strcmp(argv[2], "calls") == 0) {
		check_calls();
	} else if (strcmp(argv[2], "fork") == 0) {
		check_fork();
	} else if (strcmp(argv[2], "store") == 0 && argc == 5) {
		struct tdb_context *tdb = open_db("locking.tdb", TDB_CLEAR_IF_FIRST);

		if (tdb_store(tdb, text(argv[3]), text(argv[4]), 0) != 0) {
			fail("store: %s", tdb_errorstr(tdb));
		}
		tdb_close(tdb);
	} else if (strcmp(argv[2], "fetch") == 0 && argc == 4) {
		struct tdb_context *tdb = open_db("locking.tdb", TDB_CLEAR_IF_FIRST);
		TDB_DATA got = tdb_fetch(tdb, text(argv[3]));

		if (got.dptr == NULL) {
			fail("fetch %s: %s", argv[3], tdb_errorstr(tdb));
		}
		printf("%.*s\n", (int)got.dsize, (char *)got.dptr);
		free(got.dptr);
		tdb_close(tdb);
	} else if (strcmp(argv[2], "dump") == 0 && argc == 4) {
		char path[4096];

		snprintf(path, sizeof(path), "%s/%s", dir, argv[3]);
		return dump(path, print_record);
	} else if (strcmp(argv[2], "headers") == 0 && argc == 4) {
		return dump(argv[3], print_header);
	} else {
		fprintf(stderr, "unknown command %s\n", argv[2]);
		return 2;
	}
	return 0;
}
