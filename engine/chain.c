#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <libvirt/virterror.h>
#include <openssl/evp.h>

#include "backend.h" /* hs__jstr */
#include "chain.h"
#include "hotsnap.h" /* hs_image_id_check */
#include "domain.h" /* hs__xml_escape */
#include "util.h"
#include "verify.h"
#define HS_LOG_TAG "chain"
#include "log.h"

#define CHAIN_MAX (1u << 20)

struct hs_chain *hs__chain_new(const char *store, const char *uuid, const char *job_id,
                               char *const *targets, size_t n)
{
    struct hs_chain *c = hs__calloc(1, sizeof(*c));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    size_t i;

    c->store = hs__strdup(store);
    c->uuid = hs__strdup(uuid);
    c->file = hs__asprintf("%s/chain-%s", store, uuid);
    /* the store's tag: its path, hashed (a moved store keeps its chain
     * through the names the chain file records) */
    EVP_Digest(store, strlen(store), md, &mdlen, EVP_sha256(), NULL);
    hs__hex(md, mdlen, hex);
    c->prefix = hs__asprintf("hotsnap-%.8s-", hex);
    c->job_id = hs__strdup(job_id);
    c->name = hs__asprintf("%s%s", c->prefix, job_id);
    c->disks = hs__calloc(n ? n : 1, sizeof(*c->disks));
    c->ndisks = n;
    for (i = 0; i < n; i++)
        c->disks[i].target = hs__strdup(targets[i]);
    return c;
}

void hs__chain_free(struct hs_chain *c)
{
    size_t i;

    if (!c)
        return;
    for (i = 0; i < c->ndisks; i++) {
        free(c->disks[i].target);
        free(c->disks[i].parent_id);
        free(c->disks[i].parent_file);
        free(c->disks[i].image_id);
        free(c->disks[i].image_file);
    }
    free(c->disks);
    free(c->store);
    free(c->file);
    free(c->uuid);
    free(c->prefix);
    free(c->job_id);
    free(c->from);
    free(c->from_xml);
    free(c->name);
    free(c->name_xml);
    free(c);
}

static void disk_full(struct hs_chain_disk *d, const char *fmt, const char *a, const char *b)
{
    char why[200];

    d->incremental = 0;
    if (d->why_full[0])
        return; /* the first reason found */
    snprintf(why, sizeof(why), fmt, a, b);
    snprintf(d->why_full, sizeof(d->why_full), "%s: %s: full copy", d->target, why);
}

/* What the chain file names goes into XML and into which checkpoints are
 * deleted: a prefix of the form hotsnap-XXXXXXXX-, a checkpoint of it
 * followed by a job id. */
static int prefix_ok(const char *p)
{
    size_t i;

    if (!p || strlen(p) != 17 || strncmp(p, "hotsnap-", 8) || p[16] != '-')
        return 0;
    for (i = 8; i < 16; i++)
        if (!isxdigit((unsigned char)p[i]))
            return 0;
    return 1;
}

static int checkpoint_ok(const char *name, const char *prefix)
{
    char buf[8];

    return name && !strncmp(name, prefix, strlen(prefix)) &&
           hs_image_id_check(name + strlen(prefix), buf, sizeof(buf)) == 0;
}

int hs__chain_load(struct hs_chain *c, struct hs_err *err)
{
    char *text = NULL, file[256], why[512], *sidecar;
    const cJSON *disks, *e, *vs;
    struct stat st;
    cJSON *doc;
    size_t i;
    int dirfd, fd;

    c->loaded = 1;
    /* a store others may write to (sticky) could hold a file planted under
     * the chain's name: only hotsnap's own is read */
    fd = open(c->file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return 0; /* a new chain */
    if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
                    st.st_size > CHAIN_MAX)) {
        close(fd);
        return hs_err_set(err, -EPERM, HS_ERR_INPUT, 0,
                          "the chain file '%s' is not a regular file of hotsnap's user: move it "
                          "away to start the chain again",
                          c->file);
    }
    if (fd >= 0) {
        text = hs__calloc(1, (size_t)st.st_size + 1);
        if (read(fd, text, (size_t)st.st_size) != (ssize_t)st.st_size) {
            free(text);
            text = NULL;
        }
        close(fd);
    }
    if (!text)
        return hs_err_set(err, -EIO, HS_ERR_SYS, errno, "cannot read the chain file '%s': %s",
                          c->file, strerror(errno ? errno : EIO));
    doc = cJSON_Parse(text);
    free(text);
    if (!doc || !prefix_ok(hs__jstr(doc, "prefix")) ||
        !checkpoint_ok(hs__jstr(doc, "checkpoint"), hs__jstr(doc, "prefix"))) {
        cJSON_Delete(doc);
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                          "the chain file '%s' is not one hotsnap wrote: move it away to start "
                          "the chain again",
                          c->file);
    }
    c->from = hs__strdup(hs__jstr(doc, "checkpoint"));
    if (hs__jstr(doc, "checkpoint_xml"))
        c->from_xml = hs__strdup(hs__jstr(doc, "checkpoint_xml"));
    /* the names go on as the chain began them */
    free(c->prefix);
    c->prefix = hs__strdup(hs__jstr(doc, "prefix"));
    free(c->name);
    c->name = hs__asprintf("%s%s", c->prefix, c->job_id);
    disks = cJSON_GetObjectItemCaseSensitive(doc, "disks");
    dirfd = open(c->store, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (i = 0; i < c->ndisks; i++) {
        struct hs_chain_disk *d = &c->disks[i];
        const char *id, *f;

        if (d->nobitmap) {
            disk_full(d, "%s%snot a qcow2 disk (libvirt keeps no bitmap of it)", "", "");
            continue;
        }
        e = cJSON_GetObjectItemCaseSensitive(disks, d->target);
        id = hs__jstr(e, "image");
        f = hs__jstr(e, "file");
        vs = cJSON_GetObjectItemCaseSensitive(e, "virtual_size");
        if (!e) {
            disk_full(d, "%s%snot in the chain yet (a new disk)", "", "");
            continue;
        }
        if (!id || hs_image_id_check(id, why, sizeof(why)) < 0 || !f || !cJSON_IsNumber(vs) ||
            strchr(f, '/') || f[0] == '.') {
            disk_full(d, "%s%sthe chain file's entry is not one hotsnap wrote", "", "");
            continue;
        }
        d->parent_id = hs__strdup(id);
        d->parent_file = hs__strdup(f);
        d->parent_vsize = (uint64_t)vs->valuedouble;
        sidecar = hs__asprintf("%s.json", id);
        if (dirfd < 0)
            disk_full(d, "cannot open the store: %s%s", strerror(errno), "");
        else if (fstatat(dirfd, f, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
                 st.st_uid != geteuid())
            disk_full(d, "the last image %s is not a file of hotsnap's user in the store%s", id,
                      "");
        else if (hs__verify_image(dirfd, sidecar, file, sizeof(file), why, sizeof(why)) < 0)
            disk_full(d, "the last image %s failed its check (%s)", id, why);
        else if (strcmp(file, f))
            disk_full(d, "the last image %s is not the file the chain names%s", id, "");
        else
            d->incremental = 1; /* libvirt's side is checked next */
        free(sidecar);
    }
    if (dirfd >= 0)
        close(dirfd);
    cJSON_Delete(doc);
    return 0;
}

/* The <disk name='@target' .../> element of checkpoint XML @xml, or NULL. */
static const char *xml_disk(const char *xml, const char *target, char *buf, size_t len)
{
    char key[96];
    const char *p, *end;

    snprintf(key, sizeof(key), "<disk name='%s'", target);
    p = xml ? strstr(xml, key) : NULL;
    if (!p || !(end = strchr(p, '>')) || (size_t)(end - p) >= len)
        return NULL;
    memcpy(buf, p, (size_t)(end - p));
    buf[end - p] = 0;
    return buf;
}

void hs__chain_check(struct hs_chain *c, virDomainPtr dom)
{
    virDomainCheckpointPtr cp = NULL;
    virDomainBlockInfo bi;
    char *xml = NULL, el[512];
    const char *why = NULL;
    size_t i;
    int any = 0;

    for (i = 0; i < c->ndisks; i++)
        any |= c->disks[i].incremental;
    if (!any || !c->from)
        return;
    cp = virDomainCheckpointLookupByName(dom, c->from, 0);
    if (!cp && c->from_xml) {
        /* the domain was defined again (a migration, a virsh define): its
         * checkpoints' metadata is gone, their bitmaps are in the qcow2s */
        unsigned flags = VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE;

        if (virDomainIsActive(dom) == 1)
            flags |= VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE;
        cp = virDomainCheckpointCreateXML(dom, c->from_xml, flags);
        if (cp)
            hs_log(HS_LOG_INFO, "checkpoint %s of domain %s redefined from the chain file",
                   c->from, c->uuid);
        else
            why = virGetLastErrorMessage();
    }
    if (!cp) {
        char msg[200];

        snprintf(msg, sizeof(msg), "checkpoint %s is missing from libvirt%s%s", c->from,
                 why ? " and could not be redefined: " : "", why ? why : "");
        hs__chain_all_full(c, msg);
        return;
    }
    /* with its size, which libvirt leaves out where a bitmap is missing or
     * QEMU marked it inconsistent (it stopped without saving it) */
    xml = virDomainCheckpointGetXMLDesc(cp, VIR_DOMAIN_CHECKPOINT_XML_SIZE |
                                                VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
    for (i = 0; i < c->ndisks; i++) {
        struct hs_chain_disk *d = &c->disks[i];

        if (!d->incremental)
            continue;
        if (!xml_disk(xml, d->target, el, sizeof(el)) || !strstr(el, "checkpoint='bitmap'")) {
            disk_full(d, "checkpoint %s does not cover this disk%s", c->from, "");
            continue;
        }
        if (!strstr(el, " size='")) {
            disk_full(d, "the bitmap of checkpoint %s is missing or inconsistent (QEMU stopped "
                         "without saving it)%s",
                      c->from, "");
            continue;
        }
        if (virDomainGetBlockInfo(dom, d->target, &bi, 0) == 0 && bi.capacity != d->parent_vsize) {
            char sz[64];

            snprintf(sz, sizeof(sz), "%llu to %llu bytes", (unsigned long long)d->parent_vsize,
                     (unsigned long long)bi.capacity);
            disk_full(d, "its size changed from %s%s", sz, "");
        }
    }
    free(xml);
    virDomainCheckpointFree(cp);
}

void hs__chain_all_full(struct hs_chain *c, const char *why)
{
    size_t i;

    for (i = 0; i < c->ndisks; i++)
        if (c->disks[i].incremental)
            disk_full(&c->disks[i], "%s%s", why, "");
}

char *hs__chain_checkpoint_xml(const struct hs_chain *c, char *const *all, size_t nall)
{
    char *store = hs__xml_escape(c->store);
    char *xml = hs__asprintf("<domaincheckpoint><name>%s</name><description>hotsnap: the "
                             "incremental chain of store %s</description><disks>",
                             c->name, store),
         *next, *dev;
    size_t i, k;
    int in;

    for (i = 0; i < nall; i++) {
        for (in = 0, k = 0; k < c->ndisks; k++)
            in |= !strcmp(c->disks[k].target, all[i]) && !c->disks[k].nobitmap;
        dev = hs__xml_escape(all[i]);
        next = hs__asprintf("%s<disk name='%s' checkpoint='%s'/>", xml, dev, in ? "bitmap" : "no");
        free(dev);
        free(xml);
        xml = next;
    }
    next = hs__asprintf("%s</disks></domaincheckpoint>", xml);
    free(xml);
    free(store);
    return next;
}

const char *hs__chain_backup_mode(const struct hs_chain *c, size_t i, char *buf, size_t len)
{
    if (c->disks[i].incremental)
        snprintf(buf, len, " backupmode='incremental' incremental='%s'", c->from);
    else
        snprintf(buf, len, " backupmode='full'");
    return buf;
}

void hs__chain_strip_parent(char *xml)
{
    char *p = xml ? strstr(xml, "<parent>") : NULL, *end = p ? strstr(p, "</parent>") : NULL;

    if (end)
        memmove(p, end + strlen("</parent>"), strlen(end + strlen("</parent>")) + 1);
}

/* Only @cp: its children (another store's) are reparented. A checkpoint
 * whose bitmap QEMU lost or marked inconsistent cannot be deleted with it
 * (libvirt does not find it); its metadata goes, the broken bitmap is
 * QEMU's to ignore. 0, or -1. */
static int checkpoint_delete(virDomainCheckpointPtr cp)
{
    const char *name = virDomainCheckpointGetName(cp);

    if (virDomainCheckpointDelete(cp, 0) == 0)
        return 0;
    hs_log(HS_LOG_WARN, "cannot delete checkpoint %s with its bitmaps (%s): its metadata only",
           name, virGetLastErrorMessage());
    if (virDomainCheckpointDelete(cp, VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY) == 0)
        return 0;
    hs_log(HS_LOG_WARN, "cannot delete checkpoint %s: %s", name, virGetLastErrorMessage());
    return -1;
}

static void delete_checkpoint(virDomainPtr dom, const char *name)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(dom, name, 0);

    if (!cp)
        return;
    checkpoint_delete(cp);
    virDomainCheckpointFree(cp);
}

/* Say in @entry that checkpoint @name went. */
static void said_deleted(cJSON *entry, const char *name)
{
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(entry, "checkpoints_deleted");

    if (!arr)
        arr = cJSON_AddArrayToObject(entry, "checkpoints_deleted");
    cJSON_AddItemToArray(arr, cJSON_CreateString(name));
}

/* Every checkpoint of this store's chain but @keep goes. */
static void sweep(virDomainPtr dom, const char *prefix, const char *keep, cJSON *entry)
{
    virDomainCheckpointPtr *cps = NULL;
    int n = virDomainListAllCheckpoints(dom, &cps, 0), i;
    const char *name;

    for (i = 0; i < n; i++) {
        name = virDomainCheckpointGetName(cps[i]);
        if (name && !strncmp(name, prefix, strlen(prefix)) && (!keep || strcmp(name, keep))) {
            if (checkpoint_delete(cps[i]) == 0 && entry)
                said_deleted(entry, name);
        }
        virDomainCheckpointFree(cps[i]);
    }
    free(cps);
}

int hs__chain_commit(struct hs_chain *c, virDomainPtr dom, struct hs_err *err)
{
    cJSON *doc = cJSON_CreateObject(), *disks = cJSON_AddObjectToObject(doc, "disks"), *e;
    char *text;
    size_t i;
    int rc;

    cJSON_AddStringToObject(doc, "uuid", c->uuid);
    cJSON_AddStringToObject(doc, "prefix", c->prefix);
    cJSON_AddStringToObject(doc, "checkpoint", c->name);
    if (c->name_xml)
        cJSON_AddStringToObject(doc, "checkpoint_xml", c->name_xml);
    for (i = 0; i < c->ndisks; i++) {
        struct hs_chain_disk *d = &c->disks[i];

        if (!d->image_id)
            continue;
        e = cJSON_AddObjectToObject(disks, d->target);
        cJSON_AddStringToObject(e, "image", d->image_id);
        cJSON_AddStringToObject(e, "file", d->image_file);
        cJSON_AddNumberToObject(e, "virtual_size", (double)d->vsize);
        if (d->incremental && d->parent_id)
            cJSON_AddStringToObject(e, "parent", d->parent_id);
    }
    text = cJSON_Print(doc);
    cJSON_Delete(doc);
    rc = hs__write_atomic(c->file, text, strlen(text), 0600);
    free(text);
    if (rc < 0) {
        hs__chain_discard(c, dom);
        return hs_err_set(err, rc, HS_ERR_SYS, -rc,
                          "the images are published, but the chain file '%s' could not be "
                          "written (%s): the next incremental goes on from the images before",
                          c->file, strerror(-rc));
    }
    /* the chain goes on from here: a guest carries one bitmap per chain */
    sweep(dom, c->prefix, c->name, NULL);
    return 0;
}

void hs__chain_discard(struct hs_chain *c, virDomainPtr dom)
{
    delete_checkpoint(dom, c->name);
}

void hs__chain_recover(virDomainPtr dom, const char *file, const char *name, cJSON *entry)
{
    char *text = hs__read_file(file, CHAIN_MAX);
    cJSON *doc = text ? cJSON_Parse(text) : NULL;
    const char *head = hs__jstr(doc, "checkpoint"), *prefix = hs__jstr(doc, "prefix");

    if (!prefix_ok(prefix) || !checkpoint_ok(head, prefix))
        head = prefix = NULL; /* not one hotsnap wrote: only the run's own checkpoint goes */

    if (!head || strcmp(head, name)) {
        /* no image of the dead run's backup became the chain's */
        virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(dom, name, 0);

        if (cp && checkpoint_delete(cp) == 0)
            said_deleted(entry, name);
        if (cp)
            virDomainCheckpointFree(cp);
    }
    if (head && prefix)
        sweep(dom, prefix, head, entry); /* a commit cut short */
    cJSON_Delete(doc);
    free(text);
}
