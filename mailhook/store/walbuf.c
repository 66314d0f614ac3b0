/*
** walbuf: a SQLite VFS that wraps the default one and writes a commit's WAL frames with one write.
**
** SQLite writes each WAL frame as two writes (its 24-byte header, then the page), so a commit of
** ~90 frames costs ~180 pwrite system calls on the writer's serial path. This VFS gathers the
** contiguous writes to a file opened with SQLITE_OPEN_WAL in a bounded buffer and hands them to
** the wrapped file's xWrite as one call. Every other file, and every other method, passes through.
**
** The gathered bytes reach the file (or the flush's error is returned) before anything could need
** them there:
**   - when the page of a commit frame (a header whose "database size" field is non-zero) has been
**     gathered: from that xWrite, so a full disk or an I/O error fails the write SQLite would have
**     failed without this VFS, before SQLite publishes the commit in the wal-index;
**   - before xSync, xRead, xFileSize, xTruncate, xFileControl and xClose of the WAL file;
**   - before a write that does not continue the gathered run, and when the buffer would pass
**     WALBUF_LIMIT bytes;
**   - before xShmMap, xShmLock, xShmBarrier and xShmUnmap of the database file the WAL belongs to,
**     the calls around which SQLite publishes frames to other connections.
** When a flush fails the gathered bytes are dropped: SQLite then rolls the transaction back, and the
** frames it had written lie past the last commit frame, where no reader or recovery looks. The calls
** that cannot report a failure (xShmBarrier, xShmUnmap, an xShmLock unlock) keep the bytes for the
** next call that can; in practice the buffer is empty there, as a commit flushed at its last frame.
**
** Loaded with sqlite3_load_extension (entry point sqlite3_walbuf_init, derived from the file name),
** it registers the VFS "walbuf" (not as the default) and stays loaded (SQLITE_OK_LOAD_PERMANENTLY).
*/
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#include <string.h>

#define WALBUF_NAME "walbuf"
/* Bytes gathered at most before a flush: the unix VFS's seekAndWrite keeps only the low 17 bits
** of a write's length (SQLite's own writes are at most a 64 KiB page), so one xWrite of it must
** stay below 128 KiB. 125 frames of 1 KiB pages, 63 of 2 KiB, 31 of 4 KiB fit in one. */
#define WALBUF_LIMIT 0x1ffff
#define WALBUF_FRAME_HEADER 24       /* a WAL frame header; no other write to a WAL is this short */

typedef struct WalbufFile WalbufFile;
struct WalbufFile {
  sqlite3_file base;       /* the methods SQLite calls: walbuf's */
  sqlite3_file *pReal;     /* the wrapped VFS's file, allocated just after this struct */
  const char *zName;       /* the name xOpen was given: links a WAL to its database */
  int isWal;               /* opened with SQLITE_OPEN_WAL: the only kind that gathers writes */
  WalbufFile *pWal;        /* on a main database: its open WAL, if any */
  WalbufFile *pDb;         /* on a WAL: the main database it belongs to, if found */
  WalbufFile *pNext;       /* the list of open main databases */
  unsigned char *aBuf;     /* the gathered bytes (WAL only, allocated at the first write) */
  int nBuf;                /* how many */
  sqlite3_int64 iBufOfst;  /* the file offset of aBuf[0] */
  int commitPending;       /* the last write was a commit frame's header: flush after its page */
};

static sqlite3_vfs *pRealVfs;        /* the wrapped VFS: the default when loaded */
static WalbufFile *pOpenDatabases;   /* guarded by walbufMutex() */

static sqlite3_mutex *walbufMutex(void) {
  /* VFS1 is the unix VFS's own lock, taken inside its methods; this one is held only around the list. */
  return sqlite3_mutex_alloc(SQLITE_MUTEX_STATIC_VFS3);
}

/* Write the gathered bytes with the wrapped file's xWrite; they are gone afterwards, written or not. */
static int walbufFlush(WalbufFile *p) {
  int rc = SQLITE_OK;
  if (p->nBuf > 0) {
    rc = p->pReal->pMethods->xWrite(p->pReal, p->aBuf, p->nBuf, p->iBufOfst);
    p->nBuf = 0;
  }
  p->commitPending = 0;
  return rc;
}

/* For the void shared-memory calls: flush, but keep the bytes if that fails, for a call that can report it. */
static void walbufFlushQuietly(WalbufFile *p) {
  if (p && p->nBuf > 0) {
    int rc = p->pReal->pMethods->xWrite(p->pReal, p->aBuf, p->nBuf, p->iBufOfst);
    if (rc == SQLITE_OK) {
      p->nBuf = 0;
      p->commitPending = 0;
    }
  }
}

static int walbufClose(sqlite3_file *pFile) {
  WalbufFile *p = (WalbufFile *)pFile;
  int rc = walbufFlush(p);
  int rc2;
  sqlite3_mutex *mutex = walbufMutex();
  sqlite3_mutex_enter(mutex);
  if (p->isWal) {
    if (p->pDb) p->pDb->pWal = 0;
  } else {
    WalbufFile **pp;
    for (pp = &pOpenDatabases; *pp; pp = &(*pp)->pNext) {
      if (*pp == p) {
        *pp = p->pNext;
        break;
      }
    }
    if (p->pWal) p->pWal->pDb = 0;
  }
  sqlite3_mutex_leave(mutex);
  sqlite3_free(p->aBuf);
  p->aBuf = 0;
  rc2 = p->pReal->pMethods->xClose(p->pReal);
  return rc != SQLITE_OK ? rc : rc2;
}

static int walbufRead(sqlite3_file *pFile, void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  WalbufFile *p = (WalbufFile *)pFile;
  int rc = walbufFlush(p);
  if (rc != SQLITE_OK) return rc;
  return p->pReal->pMethods->xRead(p->pReal, zBuf, iAmt, iOfst);
}

static int walbufWrite(sqlite3_file *pFile, const void *zBuf, int iAmt, sqlite3_int64 iOfst) {
  WalbufFile *p = (WalbufFile *)pFile;
  int rc;
  const unsigned char *a = (const unsigned char *)zBuf;
  if (!p->isWal) return p->pReal->pMethods->xWrite(p->pReal, zBuf, iAmt, iOfst);
  if (p->nBuf > 0 && (iOfst != p->iBufOfst + p->nBuf || p->nBuf + (sqlite3_int64)iAmt > WALBUF_LIMIT)) {
    int commitPending = p->commitPending;  /* a commit frame's page still to come keeps its flush */
    rc = walbufFlush(p);
    if (rc != SQLITE_OK) return rc;
    p->commitPending = commitPending;
  }
  if (iAmt > WALBUF_LIMIT) {
    p->commitPending = 0;
    return p->pReal->pMethods->xWrite(p->pReal, zBuf, iAmt, iOfst);
  }
  if (p->aBuf == 0) {
    p->aBuf = sqlite3_malloc(WALBUF_LIMIT);
    if (p->aBuf == 0) return p->pReal->pMethods->xWrite(p->pReal, zBuf, iAmt, iOfst);  /* unbuffered, as before */
  }
  if (p->nBuf == 0) p->iBufOfst = iOfst;
  memcpy(p->aBuf + p->nBuf, zBuf, iAmt);
  p->nBuf += iAmt;
  if (iAmt == WALBUF_FRAME_HEADER) {
    /* Bytes 4-7 of a frame header: the database's size in pages after a commit, 0 in other frames. */
    p->commitPending = (a[4] | a[5] | a[6] | a[7]) != 0;
    return SQLITE_OK;
  }
  if (p->commitPending) return walbufFlush(p);
  return SQLITE_OK;
}

static int walbufTruncate(sqlite3_file *pFile, sqlite3_int64 size) {
  WalbufFile *p = (WalbufFile *)pFile;
  int rc = walbufFlush(p);
  if (rc != SQLITE_OK) return rc;
  return p->pReal->pMethods->xTruncate(p->pReal, size);
}

static int walbufSync(sqlite3_file *pFile, int flags) {
  WalbufFile *p = (WalbufFile *)pFile;
  int rc = walbufFlush(p);
  if (rc != SQLITE_OK) return rc;
  return p->pReal->pMethods->xSync(p->pReal, flags);
}

static int walbufFileSize(sqlite3_file *pFile, sqlite3_int64 *pSize) {
  WalbufFile *p = (WalbufFile *)pFile;
  int rc = walbufFlush(p);
  if (rc != SQLITE_OK) return rc;
  return p->pReal->pMethods->xFileSize(p->pReal, pSize);
}

static int walbufLock(sqlite3_file *pFile, int eLock) {
  WalbufFile *p = (WalbufFile *)pFile;
  return p->pReal->pMethods->xLock(p->pReal, eLock);
}

static int walbufUnlock(sqlite3_file *pFile, int eLock) {
  WalbufFile *p = (WalbufFile *)pFile;
  return p->pReal->pMethods->xUnlock(p->pReal, eLock);
}

static int walbufCheckReservedLock(sqlite3_file *pFile, int *pResOut) {
  WalbufFile *p = (WalbufFile *)pFile;
  return p->pReal->pMethods->xCheckReservedLock(p->pReal, pResOut);
}

static int walbufFileControl(sqlite3_file *pFile, int op, void *pArg) {
  WalbufFile *p = (WalbufFile *)pFile;
  int rc = walbufFlush(p);
  if (rc != SQLITE_OK) return rc;
  if (op == SQLITE_FCNTL_VFSNAME) {
    /* "walbuf/unix", as SQLite's own shims answer, for sqlite3_file_control(SQLITE_FCNTL_VFSNAME). */
    rc = p->pReal->pMethods->xFileControl(p->pReal, op, pArg);
    if (rc == SQLITE_OK) {
      char *zInner = *(char **)pArg;
      *(char **)pArg = sqlite3_mprintf("%s/%z", WALBUF_NAME, zInner);
    } else {
      *(char **)pArg = sqlite3_mprintf("%s/%s", WALBUF_NAME, pRealVfs->zName);
    }
    return *(char **)pArg ? SQLITE_OK : SQLITE_NOMEM;
  }
  return p->pReal->pMethods->xFileControl(p->pReal, op, pArg);
}

static int walbufSectorSize(sqlite3_file *pFile) {
  WalbufFile *p = (WalbufFile *)pFile;
  return p->pReal->pMethods->xSectorSize(p->pReal);
}

static int walbufDeviceCharacteristics(sqlite3_file *pFile) {
  WalbufFile *p = (WalbufFile *)pFile;
  return p->pReal->pMethods->xDeviceCharacteristics(p->pReal);
}

static int walbufShmMap(sqlite3_file *pFile, int iPg, int pgsz, int bExtend, void volatile **pp) {
  WalbufFile *p = (WalbufFile *)pFile;
  if (p->pWal) {
    int rc = walbufFlush(p->pWal);
    if (rc != SQLITE_OK) return rc;
  }
  return p->pReal->pMethods->xShmMap(p->pReal, iPg, pgsz, bExtend, pp);
}

static int walbufShmLock(sqlite3_file *pFile, int offset, int n, int flags) {
  WalbufFile *p = (WalbufFile *)pFile;
  if (flags & SQLITE_SHM_UNLOCK) {
    /* An unlock must happen whatever the flush does; a failure is left for the WAL's next call. */
    walbufFlushQuietly(p->pWal);
  } else if (p->pWal) {
    int rc = walbufFlush(p->pWal);
    if (rc != SQLITE_OK) return rc;
  }
  return p->pReal->pMethods->xShmLock(p->pReal, offset, n, flags);
}

static void walbufShmBarrier(sqlite3_file *pFile) {
  WalbufFile *p = (WalbufFile *)pFile;
  walbufFlushQuietly(p->pWal);
  p->pReal->pMethods->xShmBarrier(p->pReal);
}

static int walbufShmUnmap(sqlite3_file *pFile, int deleteFlag) {
  WalbufFile *p = (WalbufFile *)pFile;
  walbufFlushQuietly(p->pWal);
  return p->pReal->pMethods->xShmUnmap(p->pReal, deleteFlag);
}

static int walbufFetch(sqlite3_file *pFile, sqlite3_int64 iOfst, int iAmt, void **pp) {
  WalbufFile *p = (WalbufFile *)pFile;
  if (p->pReal->pMethods->iVersion < 3) {
    *pp = 0;
    return SQLITE_OK;
  }
  return p->pReal->pMethods->xFetch(p->pReal, iOfst, iAmt, pp);
}

static int walbufUnfetch(sqlite3_file *pFile, sqlite3_int64 iOfst, void *pPage) {
  WalbufFile *p = (WalbufFile *)pFile;
  if (p->pReal->pMethods->iVersion < 3) return SQLITE_OK;
  return p->pReal->pMethods->xUnfetch(p->pReal, iOfst, pPage);
}

/* Version 1 for a wrapped file without shared memory, so that SQLite does not choose WAL mode for it. */
static const sqlite3_io_methods walbufMethodsV1 = {
  1, walbufClose, walbufRead, walbufWrite, walbufTruncate, walbufSync, walbufFileSize, walbufLock,
  walbufUnlock, walbufCheckReservedLock, walbufFileControl, walbufSectorSize, walbufDeviceCharacteristics,
  0, 0, 0, 0, 0, 0
};

static const sqlite3_io_methods walbufMethodsV3 = {
  3, walbufClose, walbufRead, walbufWrite, walbufTruncate, walbufSync, walbufFileSize, walbufLock,
  walbufUnlock, walbufCheckReservedLock, walbufFileControl, walbufSectorSize, walbufDeviceCharacteristics,
  walbufShmMap, walbufShmLock, walbufShmBarrier, walbufShmUnmap, walbufFetch, walbufUnfetch
};

static int walbufOpen(sqlite3_vfs *pVfs, sqlite3_filename zName, sqlite3_file *pFile, int flags, int *pOutFlags) {
  WalbufFile *p = (WalbufFile *)pFile;
  int rc;
  (void)pVfs;
  memset(p, 0, sizeof(*p));
  p->pReal = (sqlite3_file *)&p[1];
  p->zName = zName;
  p->isWal = (flags & SQLITE_OPEN_WAL) != 0;
  rc = pRealVfs->xOpen(pRealVfs, zName, p->pReal, flags, pOutFlags);
  if (p->pReal->pMethods == 0) {
    /* SQLite calls xClose only when pMethods is set: nothing of ours may stay registered. */
    p->base.pMethods = 0;
    return rc;
  }
  p->base.pMethods = p->pReal->pMethods->iVersion >= 2 ? &walbufMethodsV3 : &walbufMethodsV1;
  if (rc == SQLITE_OK && (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)) && zName) {
    sqlite3_mutex *mutex = walbufMutex();
    sqlite3_mutex_enter(mutex);
    if (p->isWal) {
      /* SQLite names a WAL inside the same allocation as its database, which gives back that very pointer. */
      const char *zDb = sqlite3_filename_database(zName);
      WalbufFile *pDb;
      for (pDb = pOpenDatabases; pDb; pDb = pDb->pNext) {
        if (pDb->zName == zDb && pDb->pWal == 0) {
          pDb->pWal = p;
          p->pDb = pDb;
          break;
        }
      }
    } else {
      p->pNext = pOpenDatabases;
      pOpenDatabases = p;
    }
    sqlite3_mutex_leave(mutex);
  }
  return rc;
}

static int walbufDelete(sqlite3_vfs *pVfs, const char *zName, int syncDir) {
  (void)pVfs;
  return pRealVfs->xDelete(pRealVfs, zName, syncDir);
}

static int walbufAccess(sqlite3_vfs *pVfs, const char *zName, int flags, int *pResOut) {
  (void)pVfs;
  return pRealVfs->xAccess(pRealVfs, zName, flags, pResOut);
}

static int walbufFullPathname(sqlite3_vfs *pVfs, const char *zName, int nOut, char *zOut) {
  (void)pVfs;
  return pRealVfs->xFullPathname(pRealVfs, zName, nOut, zOut);
}

static void *walbufDlOpen(sqlite3_vfs *pVfs, const char *zPath) {
  (void)pVfs;
  return pRealVfs->xDlOpen(pRealVfs, zPath);
}

static void walbufDlError(sqlite3_vfs *pVfs, int nByte, char *zErrMsg) {
  (void)pVfs;
  pRealVfs->xDlError(pRealVfs, nByte, zErrMsg);
}

static void (*walbufDlSym(sqlite3_vfs *pVfs, void *pHandle, const char *zSymbol))(void) {
  (void)pVfs;
  return pRealVfs->xDlSym(pRealVfs, pHandle, zSymbol);
}

static void walbufDlClose(sqlite3_vfs *pVfs, void *pHandle) {
  (void)pVfs;
  pRealVfs->xDlClose(pRealVfs, pHandle);
}

static int walbufRandomness(sqlite3_vfs *pVfs, int nByte, char *zOut) {
  (void)pVfs;
  return pRealVfs->xRandomness(pRealVfs, nByte, zOut);
}

static int walbufSleep(sqlite3_vfs *pVfs, int microseconds) {
  (void)pVfs;
  return pRealVfs->xSleep(pRealVfs, microseconds);
}

static int walbufCurrentTime(sqlite3_vfs *pVfs, double *pTime) {
  (void)pVfs;
  return pRealVfs->xCurrentTime(pRealVfs, pTime);
}

static int walbufGetLastError(sqlite3_vfs *pVfs, int nByte, char *zOut) {
  (void)pVfs;
  return pRealVfs->xGetLastError ? pRealVfs->xGetLastError(pRealVfs, nByte, zOut) : 0;
}

static int walbufCurrentTimeInt64(sqlite3_vfs *pVfs, sqlite3_int64 *pTime) {
  (void)pVfs;
  return pRealVfs->xCurrentTimeInt64(pRealVfs, pTime);
}

static sqlite3_vfs walbufVfs = {
  2, 0, 1024, 0, WALBUF_NAME, 0,
  walbufOpen, walbufDelete, walbufAccess, walbufFullPathname, walbufDlOpen, walbufDlError, walbufDlSym,
  walbufDlClose, walbufRandomness, walbufSleep, walbufCurrentTime, walbufGetLastError, walbufCurrentTimeInt64,
  0, 0, 0
};

#ifdef _WIN32
__declspec(dllexport)
#endif
int sqlite3_walbuf_init(sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi) {
  (void)db;
  SQLITE_EXTENSION_INIT2(pApi);
  if (sqlite3_vfs_find(WALBUF_NAME) == 0) {
    pRealVfs = sqlite3_vfs_find(0);
    if (pRealVfs == 0) return SQLITE_ERROR;
    if (pRealVfs->iVersion < 2 || pRealVfs->xCurrentTimeInt64 == 0) {
      *pzErrMsg = sqlite3_mprintf("walbuf: the default VFS %s is older than version 2", pRealVfs->zName);
      return SQLITE_ERROR;
    }
    walbufVfs.szOsFile = (int)sizeof(WalbufFile) + pRealVfs->szOsFile;
    walbufVfs.mxPathname = pRealVfs->mxPathname;
    int rc = sqlite3_vfs_register(&walbufVfs, 0);
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK_LOAD_PERMANENTLY;
}
