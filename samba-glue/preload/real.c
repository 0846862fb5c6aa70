/*
 * real.c: the two libraries underneath, reached through dlopen/dlsym.
 *
 * libtdb.so.1: dlopen returns the copy the process already has (Samba's libraries need
 * it), and dlsym on that handle finds libtdb's own definitions, never ours: a handle
 * lookup searches the library and its dependencies, not the preload that shadows it.
 * dlsym(RTLD_NEXT) would work in smbd too, but finds nothing in a process that does not
 * link libtdb itself.
 *
 * librctdb.so: opened RTLD_DEEPBIND, so that its own tdb_* calls bind to libtdb.so.1
 * (its dependency) before the preload, which is first in the global scope. Without it
 * librctdb's tdb_open of its node file "locking.tdb" would come back to us.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

#define LIBTDB_SONAME "libtdb.so.1"
#define LIBRCTDB_NAME "librctdb.so"
/* Where librctdb.so is, if not next to the preload or on the library path. */
#define LIBRCTDB_ENV "RCTDB_LIBRCTDB"

struct real_libtdb real_tdb_table;
bool real_tdb_loaded;
static pthread_once_t real_tdb_once = PTHREAD_ONCE_INIT;

static void die(const char *fmt, const char *a, const char *b)
{
	char line[512];
	int n = snprintf(line, sizeof(line), fmt, a, b);

	if (n > 0) {
		ssize_t ignored = write(STDERR_FILENO, line, strnlen(line, sizeof(line)));
		(void)ignored;
	}
	abort();
}

static void real_tdb_load_once(void)
{
	void *lib = dlopen(LIBTDB_SONAME, RTLD_NOW | RTLD_LOCAL);

	if (lib == NULL) {
		die("rctdb tdb preload: cannot load %s: %s\n", LIBTDB_SONAME, dlerror());
	}
#define RESOLVE(name)                                                                          \
	real_tdb_table.name = (__typeof__(name) *)dlsym(lib, #name);                             \
	if (real_tdb_table.name == NULL) {                                                       \
		die("rctdb tdb preload: %s has no %s\n", LIBTDB_SONAME, #name);                  \
	}
	LIBTDB_FUNCTIONS(RESOLVE)
#undef RESOLVE
	__atomic_store_n(&real_tdb_loaded, true, __ATOMIC_RELEASE);
}

void real_tdb_load(void)
{
	pthread_once(&real_tdb_once, real_tdb_load_once);
}

/* Resolve libtdb when the preload is loaded: a missing function is found at start, not at
 * the first call that needs it (BIND_NOW in spirit). */
__attribute__((constructor)) static void real_tdb_load_at_start(void)
{
	real_tdb_load();
}

static struct librctdb rctdb_table;
static bool rctdb_loaded;
static pthread_once_t rctdb_once = PTHREAD_ONCE_INIT;

/* RCTDB_LIBRCTDB, else librctdb.so beside the preload, else the library search path. */
static void *open_librctdb(char *why, size_t why_len)
{
	const int flags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
	const char *env = getenv(LIBRCTDB_ENV);
	char beside[PATH_MAX];
	Dl_info self;
	void *lib;

	if (env != NULL && env[0] != '\0') {
		lib = dlopen(env, flags);
		if (lib == NULL) {
			snprintf(why, why_len, "%s=%s: %s", LIBRCTDB_ENV, env, dlerror());
		}
		return lib;
	}
	if (dladdr((void *)open_librctdb, &self) != 0 && self.dli_fname != NULL) {
		const char *slash = strrchr(self.dli_fname, '/');
		int dir_len = slash == NULL ? 0 : (int)(slash - self.dli_fname);

		snprintf(beside, sizeof(beside), "%.*s/%s", dir_len, self.dli_fname, LIBRCTDB_NAME);
		if (dir_len > 0 && access(beside, R_OK) == 0) {
			lib = dlopen(beside, flags);
			if (lib != NULL) {
				return lib;
			}
		}
	}
	lib = dlopen(LIBRCTDB_NAME, flags);
	if (lib == NULL) {
		snprintf(why, why_len, "%s (set %s to its path): %s", LIBRCTDB_NAME, LIBRCTDB_ENV,
			 dlerror());
	}
	return lib;
}

static void librctdb_load_once(void)
{
	char why[1024] = "";
	void *lib = open_librctdb(why, sizeof(why));

	if (lib == NULL) {
		preload_log(NULL, TDB_DEBUG_FATAL, "cannot load librctdb: %s", why);
		return;
	}
#define RESOLVE(name)                                                                          \
	rctdb_table.name = (__typeof__(name) *)dlsym(lib, #name);                                \
	if (rctdb_table.name == NULL) {                                                          \
		preload_log(NULL, TDB_DEBUG_FATAL, "librctdb has no %s: %s", #name, dlerror());  \
		return;                                                                          \
	}
	LIBRCTDB_FUNCTIONS(RESOLVE)
#undef RESOLVE
	rctdb_loaded = true;
}

const struct librctdb *librctdb(void)
{
	pthread_once(&rctdb_once, librctdb_load_once);
	return rctdb_loaded ? &rctdb_table : NULL;
}
