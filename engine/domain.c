#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "domain.h"
#include "util.h"

static char *xml_prop(xmlNodePtr node, const char *name)
{
    xmlChar *v = node ? xmlGetProp(node, (const xmlChar *)name) : NULL;
    char *s;

    if (!v)
        return NULL;
    s = hs__strdup((const char *)v);
    xmlFree(v);
    return s;
}

static xmlNodePtr xml_child(xmlNodePtr node, const char *name)
{
    xmlNodePtr c;

    for (c = node ? node->children : NULL; c; c = c->next)
        if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name))
            return c;
    return NULL;
}

static char *xml_text(xmlNodePtr node)
{
    xmlChar *v;
    char *s;

    if (!node)
        return NULL;
    v = xmlNodeGetContent(node);
    s = hs__strdup(v ? (const char *)v : "");
    xmlFree(v);
    return s;
}

static char *disk_source(xmlNodePtr src, const char *type)
{
    static const char *const attrs[] = {"file", "dev", "name", "dir", "volume"};
    size_t i;
    char *s;

    if (!src)
        return NULL;
    (void)type;
    for (i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++)
        if ((s = xml_prop(src, attrs[i])) != NULL)
            return s;
    return NULL;
}

static void disk_check(struct hs_disk *d, xmlNodePtr src)
{
    char *proto;

    if (!strcmp(d->type, "file")) {
        if (!d->source)
            d->unsupported = hs__asprintf("disk '%s' has no source file", d->target);
        else if (!d->format || (strcmp(d->format, "qcow2") && strcmp(d->format, "raw")))
            d->unsupported = hs__asprintf("disk '%s' has format '%s'; hotsnap captures qcow2 "
                                          "and raw files",
                                          d->target, d->format ? d->format : "(none)");
        return;
    }
    if (!strcmp(d->type, "network")) {
        proto = src ? xml_prop(src, "protocol") : NULL;
        d->unsupported =
            hs__asprintf("disk '%s' is a network disk (%s '%s'); hotsnap captures "
                         "only file-backed disks",
                         d->target, proto ? proto : "unknown protocol", d->source ? d->source : "");
        free(proto);
        return;
    }
    d->unsupported = hs__asprintf("disk '%s' is a %s disk ('%s'); hotsnap captures only "
                                  "file-backed disks",
                                  d->target, !strcmp(d->type, "block") ? "block device" : d->type,
                                  d->source ? d->source : "");
}

static char *node_dump(xmlDocPtr doc, xmlNodePtr node)
{
    xmlBufferPtr buf = xmlBufferCreate();
    char *s;

    xmlNodeDump(buf, doc, node, 0, 0);
    s = hs__strdup((const char *)xmlBufferContent(buf));
    xmlBufferFree(buf);
    return s;
}

static void info_add_hostdev(struct hs_domain_info *info, char *xml)
{
    info->hostdevs = realloc(info->hostdevs, (info->nhostdevs + 1) * sizeof(char *));
    if (!info->hostdevs)
        abort();
    info->hostdevs[info->nhostdevs++] = xml;
}

static void nova_metadata(struct hs_domain_info *out, xmlNodePtr inst)
{
    xmlNodePtr root = xml_child(inst, "root"), owner = xml_child(inst, "owner");
    char *type = xml_prop(root, "type");

    if (type && !strcmp(type, "image"))
        out->base_image_ref = xml_prop(root, "uuid");
    free(type);
    out->user_id = xml_prop(xml_child(owner, "user"), "uuid");
    out->owner_id = xml_prop(xml_child(owner, "project"), "uuid");
}

/* <seclabel type='dynamic' model='dac'><label>+64055:+64055</label>: who
 * QEMU runs as (a running domain's live XML carries it). */
static void dac_label(struct hs_domain_info *out, xmlNodePtr root)
{
    xmlNodePtr n;
    char *model, *label;
    long uid, gid;

    out->qemu_uid = out->qemu_gid = -1;
    for (n = root->children; n; n = n->next) {
        if (n->type != XML_ELEMENT_NODE || strcmp((const char *)n->name, "seclabel"))
            continue;
        model = xml_prop(n, "model");
        label = model && !strcmp(model, "dac") ? xml_text(xml_child(n, "label")) : NULL;
        if (label && sscanf(label, "+%ld:+%ld", &uid, &gid) == 2 && uid >= 0 && gid >= 0) {
            out->qemu_uid = uid;
            out->qemu_gid = gid;
        }
        free(model);
        free(label);
    }
}

int hs__domain_qemu_user_known(const struct hs_domain_info *info)
{
    return info->qemu_uid >= 0 || getpwnam("libvirt-qemu") != NULL;
}

int hs__domain_parse(const char *xml, struct hs_domain_info *out, struct hs_err *err)
{
    xmlDocPtr doc;
    xmlNodePtr root, devices, n;
    char *s;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    doc = xmlReadMemory(xml, (int)strlen(xml), "domain.xml", NULL,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "domain XML does not parse");
    root = xmlDocGetRootElement(doc);
    if (!root || strcmp((const char *)root->name, "domain")) {
        rc = hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "domain XML has no <domain> root");
        goto cleanup;
    }
    out->name = xml_text(xml_child(root, "name"));
    s = xml_text(xml_child(root, "uuid"));
    snprintf(out->uuid, sizeof(out->uuid), "%s", s ? s : "");
    free(s);
    s = xml_text(xml_child(root, "memory"));
    if (s) {
        char *unit = xml_prop(xml_child(root, "memory"), "unit");
        uint64_t v = strtoull(s, NULL, 10);

        if (unit && (!strcmp(unit, "MiB") || !strcmp(unit, "M")))
            v *= 1024;
        else if (unit && (!strcmp(unit, "GiB") || !strcmp(unit, "G")))
            v *= 1024 * 1024;
        out->memory_kib = v;
        free(unit);
        free(s);
    }
    nova_metadata(out, xml_child(xml_child(root, "metadata"), "instance"));
    dac_label(out, root);
    devices = xml_child(root, "devices");
    for (n = devices ? devices->children : NULL; n; n = n->next) {
        if (n->type != XML_ELEMENT_NODE)
            continue;
        if (!strcmp((const char *)n->name, "disk")) {
            struct hs_disk d = {0};
            xmlNodePtr src = xml_child(n, "source");

            d.device = xml_prop(n, "device");
            if (!d.device)
                d.device = hs__strdup("disk");
            if (strcmp(d.device, "disk")) {
                free(d.device);
                continue; /* cdrom, floppy, lun: not the guest's disks */
            }
            d.type = xml_prop(n, "type");
            if (!d.type)
                d.type = hs__strdup("file");
            d.target = xml_prop(xml_child(n, "target"), "dev");
            if (!d.target)
                d.target = hs__strdup("?");
            d.format = xml_prop(xml_child(n, "driver"), "type");
            d.source = disk_source(src, d.type);
            s = xml_prop(xml_child(n, "boot"), "order");
            d.boot_order = s ? atoi(s) : 0;
            free(s);
            d.readonly = xml_child(n, "readonly") != NULL;
            {
                xmlNodePtr bs = xml_child(n, "backingStore");

                d.backing = xml_prop(xml_child(bs, "source"), "file");
                d.backing_format = xml_prop(xml_child(bs, "format"), "type");
            }
            disk_check(&d, src);
            out->disks = realloc(out->disks, (out->ndisks + 1) * sizeof(d));
            if (!out->disks)
                abort();
            out->disks[out->ndisks++] = d;
        } else if (!strcmp((const char *)n->name, "hostdev")) {
            char *mode = xml_prop(n, "mode"), *type = xml_prop(n, "type");

            /* host PCI devices (incl. SR-IOV VFs given as hostdev) block a save */
            if ((!mode || !strcmp(mode, "subsystem")) && type && !strcmp(type, "pci"))
                info_add_hostdev(out, node_dump(doc, n));
            free(mode);
            free(type);
        } else if (!strcmp((const char *)n->name, "interface")) {
            char *type = xml_prop(n, "type");

            /* SR-IOV ports: <interface type='hostdev'> */
            if (type && !strcmp(type, "hostdev"))
                info_add_hostdev(out, node_dump(doc, n));
            free(type);
        }
    }
cleanup:
    xmlFreeDoc(doc);
    if (rc < 0)
        hs__domain_info_clear(out);
    return rc;
}

void hs__domain_info_clear(struct hs_domain_info *info)
{
    size_t i;

    if (!info)
        return;
    for (i = 0; i < info->ndisks; i++) {
        free(info->disks[i].target);
        free(info->disks[i].type);
        free(info->disks[i].device);
        free(info->disks[i].format);
        free(info->disks[i].source);
        free(info->disks[i].backing);
        free(info->disks[i].backing_format);
        free(info->disks[i].unsupported);
    }
    free(info->disks);
    for (i = 0; i < info->nhostdevs; i++)
        free(info->hostdevs[i]);
    free(info->hostdevs);
    free(info->name);
    free(info->base_image_ref);
    free(info->owner_id);
    free(info->user_id);
    memset(info, 0, sizeof(*info));
}

int hs__domain_root_disk(const struct hs_domain_info *info)
{
    int best = -1;
    size_t i;

    for (i = 0; i < info->ndisks; i++) {
        int order = info->disks[i].boot_order;

        if (order <= 0)
            continue;
        if (best < 0 || order < info->disks[best].boot_order)
            best = (int)i;
    }
    if (best < 0 && info->ndisks > 0)
        best = 0;
    return best;
}

int hs__domain_select(const struct hs_domain_info *info, int all_disks, int *idx,
                      struct hs_err *err)
{
    int root = hs__domain_root_disk(info), n = 0;
    size_t i;

    if (root < 0)
        return hs_err_set(err, -ENOENT, HS_ERR_INPUT, 0, "domain '%s' has no disk to snapshot",
                          info->name);
    idx[n++] = root;
    if (all_disks)
        for (i = 0; i < info->ndisks; i++)
            if ((int)i != root)
                idx[n++] = (int)i;
    for (i = 0; i < (size_t)n; i++) {
        const struct hs_disk *d = &info->disks[idx[i]];

        if (d->unsupported)
            return hs_err_set(err, -ENOTSUP, HS_ERR_INPUT, 0, "domain '%s': %s", info->name,
                              d->unsupported);
    }
    return n;
}

/* ---- what libvirt runs for us ---- */

static xmlDocPtr xml_read(const char *xml)
{
    return xml ? xmlReadMemory(xml, (int)strlen(xml), "libvirt.xml", NULL,
                               XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING)
               : NULL;
}

/* Whether an attribute named @attr of @node, its siblings or anything below
 * them names a path under @dir. */
static int any_attr(xmlNodePtr node, const char *attr, const char *dir)
{
    xmlNodePtr c;
    char *v;
    int hit = 0;

    for (c = node; c && !hit; c = c->next) {
        if (c->type != XML_ELEMENT_NODE)
            continue;
        v = xml_prop(c, attr);
        hit = hs__path_in_dir(v, dir);
        free(v);
        if (!hit)
            hit = any_attr(c->children, attr, dir);
    }
    return hit;
}

int hs__backup_xml_in_dir(const char *xml, const char *dir)
{
    xmlDocPtr doc = xml_read(xml);
    xmlNodePtr root;
    int hit;

    if (!doc)
        return 0;
    root = xmlDocGetRootElement(doc);
    /* push targets and pull scratch files are file='...', the NBD socket socket='...' */
    hit = root && (any_attr(root, "file", dir) || any_attr(root, "socket", dir));
    xmlFreeDoc(doc);
    return hit;
}

char *hs__domain_xml_mirror(const char *xml, const char *target)
{
    xmlDocPtr doc = xml_read(xml);
    xmlNodePtr devices, n, mirror;
    char *dev, *file = NULL;

    if (!doc)
        return NULL;
    devices = xml_child(xmlDocGetRootElement(doc), "devices");
    for (n = devices ? devices->children : NULL; n && !file; n = n->next) {
        if (n->type != XML_ELEMENT_NODE || strcmp((const char *)n->name, "disk"))
            continue;
        dev = xml_prop(xml_child(n, "target"), "dev");
        mirror = dev && !strcmp(dev, target) ? xml_child(n, "mirror") : NULL;
        free(dev);
        if (mirror) {
            file = xml_prop(xml_child(mirror, "source"), "file");
            if (!file)
                file = xml_prop(mirror, "file");
        }
    }
    xmlFreeDoc(doc);
    return file;
}

int hs__domain_xml_marked(const char *xml, const char *job_id)
{
    xmlDocPtr doc = xml_read(xml);
    xmlNodePtr md, c;
    char *id;
    int hit = 0;

    if (!doc)
        return 0;
    md = xml_child(xmlDocGetRootElement(doc), "metadata");
    for (c = md ? md->children : NULL; c && !hit; c = c->next) {
        if (c->type != XML_ELEMENT_NODE || !c->ns || !c->ns->href ||
            strcmp((const char *)c->ns->href, HS_MARK_NS))
            continue;
        id = xml_prop(c, "id");
        hit = id && !strcmp(id, job_id);
        free(id);
    }
    xmlFreeDoc(doc);
    return hit;
}

/* What stands for @c in XML text and attributes (either quote), or NULL. */
static const char *xml_entity(char c)
{
    switch (c) {
    case '&':
        return "&amp;";
    case '<':
        return "&lt;";
    case '>':
        return "&gt;";
    case '\'':
        return "&apos;";
    case '"':
        return "&quot;";
    default:
        return NULL;
    }
}

char *hs__xml_escape(const char *s)
{
    size_t n = 0;
    const char *p, *e;
    char *out, *o;

    for (p = s; *p; p++)
        n += (e = xml_entity(*p)) ? strlen(e) : 1;
    out = o = hs__calloc(1, n + 1);
    for (p = s; *p; p++) {
        if ((e = xml_entity(*p)))
            o = stpcpy(o, e);
        else
            *o++ = *p;
    }
    *o = '\0';
    return out;
}
